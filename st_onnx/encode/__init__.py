"""numpy + tokenizers only: encode options, input checks, length-sorted batching, output formatting."""
