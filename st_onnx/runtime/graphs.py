"""Finding the fused graph a model folder should run, and deciding whether it must be (re-)exported.

Torch-free: this module reads folders, manifests and fingerprints (files only); the export itself is a callable
handed in by the backend, which imports the torch exporter only when an export is really needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import folders, layout
from ..errors import GraphFileError, InvalidInputError, ModelFolderError, NewerGraphError, StaleGraphError
from .encoder import PROMPT_LENGTH
from .manifest import content_digest, graph_problem, read_manifest

logger = logging.getLogger(__name__)

EXPORT_MODES = ("auto", "never")


@dataclass(frozen=True)
class GraphChoice:
    path: Path
    manifest: dict[str, Any]
    exported: bool  # True when this load exported it


def has_weights(folder: Path) -> bool:
    """True when the folder holds the torch weights of its Transformer (so a graph can be exported from it)."""
    from ..fingerprint import weight_files

    return bool(weight_files(layout.transformer_folder(folder)))






def _usable(folder: Path, graph: Path, fingerprint: str | None, precision: str,
            sources: "Snapshot") -> tuple[dict[str, Any] | None, Exception | None]:
    """(manifest, None) when ``graph`` may run for weights of ``fingerprint`` (None: a folder without weights)
    at ``precision``, else (None, the error saying why not: StaleGraphError or GraphFileError). A graph whose
    files are unchanged since last checked (the stat record) is not hashed again; ``sources``: the folder's files
    as they were before ``fingerprint`` was taken."""
    try:
        manifest = read_manifest(graph)
    except NewerGraphError:
        raise
    except GraphFileError as e:
        return None, e
    if manifest and manifest.get("precision") != precision:  # another precision's files copied under this name
        return None, GraphFileError(f"the fused graph {graph} is a {manifest.get('precision')!r} graph by its "
                                    f"manifest, where {precision!r} was asked for")
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        if not manifest:
            return None, GraphFileError(f"the fused graph {graph} has no manifest")
        return None, StaleGraphError(f"the fused graph {graph} was exported from other weights (folder "
                                     f"fingerprint now {fingerprint!r})")
    if _stat_unchanged(folder, graph, fingerprint):
        return manifest, None
    checked = _graph_signature(folder, graph)
    problem = graph_problem(graph, manifest)
    if problem:
        return None, GraphFileError(problem)
    record_stat(folder, graph, fingerprint, sources, checked)
    return manifest, None


def _changed_source(folder: Path, graph: Path, manifest: dict[str, Any]) -> Exception | None:
    """For a folder without the Transformer's weights: a StaleGraphError when a file the graph was exported
    from is here with other contents (a module config, modules.json, Dense weights); files left out of the
    folder (a deployment of the graph and tokenizer only) are not asked for."""
    from ..fingerprint import file_digest

    recorded = manifest.get("source_files")
    for name, digest in sorted(recorded.items() if isinstance(recorded, dict) else []):
        path = folder / name
        if path.is_file() and file_digest(path) != digest:
            return StaleGraphError(f"the fused graph {graph} was exported from another {name} than the one in "
                                   f"{folder} now")
    return None


def default_cache_root() -> Path:
    env = os.environ.get("ST_ONNX_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "st_onnx"


def graphs_root(cache_folder: str | os.PathLike | None) -> Path:
    """The graph cache: ``cache_folder``'s ``st_onnx_graphs``, else the default cache root's."""
    root = Path(cache_folder).expanduser() if cache_folder else default_cache_root()
    return root / "st_onnx_graphs"


def cache_dir_for(folder: Path, cache_folder: str | os.PathLike | None) -> Path:
    """Where graphs of a read-only folder go: one sub-folder per model folder path."""
    real = folder.resolve()  # a folder named through a link and by its real path: one cache folder, one export
    key = hashlib.sha256(str(real).encode()).hexdigest()[:16]
    return graphs_root(cache_folder) / f"{real.name}-{key}"


def is_writable(folder: Path) -> bool:
    """Whether graphs can be written into ``folder``: its graph folder made (and removed again if it was not
    there: an export that fails leaves the model folder as it was) and found writable."""
    target = folder / layout.FUSED_DIR
    made = folders.missing_folders(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    writable = os.access(target, os.W_OK)
    folders.remove_empty(made)
    return writable


def find_graph(folder: Path, precision: str, *, file_name: str | None = None, export: str = "auto",
               cache_folder: str | os.PathLike | None = None,
               exporter: Callable[[Path, str, Path | None], Path] | None = None) -> GraphChoice:
    """The graph to run for ``folder``: fresh as found, exported when missing or stale, or an error that says why."""
    if export not in EXPORT_MODES:
        raise InvalidInputError(f"onnx_options['export'] is {export!r}; allowed: {', '.join(map(repr, EXPORT_MODES))}")
    if file_name is not None:
        return _named_graph(folder, file_name)
    weights = has_weights(folder)
    cache = cache_dir_for(folder, cache_folder)
    candidates = [layout.fused_graph_path(folder, precision), layout.fused_graph_path(cache, precision)]
    existing = [g for g in candidates if g.is_file()]
    if not weights:
        if not existing:
            raise ModelFolderError(
                f"{folder} holds neither a fused {precision} graph ({candidates[0]}) nor torch weights to export "
                f"one from; export it where the weights are (`{layout.export_command(precision, out_dir=folder)}`) "
                "or pass onnx_options={'precision': ...} naming a precision that was exported"
            )
        manifest, problem = _usable(folder, existing[0], None, precision, Snapshot.take(folder))
        problem = problem or _changed_source(folder, existing[0], manifest)
        if problem:
            raise type(problem)(f"{problem}; export it again where the weights are "
                                f"(`{layout.export_command(precision, out_dir=folder)}`)")
        logger.debug("no torch weights in %s: using %s as it is", folder, existing[0])
        return GraphChoice(existing[0], manifest, exported=False)
    found, problems, current, sources = _look(folder, candidates, precision, export)
    if found is not None:
        return found
    # Processes loading one folder at once (web server workers) export it once: the first exports under the
    # folder's lock, the others wait for it and then find its graph. The second look holds the graph folders'
    # locks too: an export writing into them (`st-onnx export` in place) has the manifest away until it is done.
    # A graph found fresh takes no lock: its load never waits for another precision's export.
    with folders.locked(folder, waiting=f"another export of {folder}"):
        with _holding(c.parent for c in candidates):
            found, problems, current, sources = _look(folder, candidates, precision, export, again=True)
        if found is not None:
            return found
        return _export_graph(folder, precision, candidates, cache, export, exporter, problems, current, sources)


def _look(folder: Path, candidates: list[Path], precision: str, export: str, again: bool = False
          ) -> tuple[GraphChoice | None, list[Exception], str | None, "Snapshot | None"]:
    """(the fresh graph, ...) or (None, why each graph there is not fresh, the folder's fingerprint, the snapshot
    of its files taken before that fingerprint). ``again``: the second look, which logs nothing the first did."""
    manifests, refused = {}, []
    for graph in candidates:  # a newer st-onnx's graph is not run, nor does it keep the other one from running
        try:
            if graph.is_file():
                manifests[graph] = _manifest_or_empty(graph)
        except NewerGraphError as e:
            refused.append(e)
    existing = list(manifests)
    if export == "auto":  # a fresh graph of an older layout is re-exported once (layout.GRAPH_LAYOUT)
        existing = [g for g in existing if not _older_layout(g, manifests[g], tell=not again)]
    else:  # "never" runs an older layout's graph (same embeddings), but not one that no check vouched for
        unchecked = {g: _unchecked_graft(g, manifests[g]) for g in existing}
        refused += [why for why in unchecked.values() if why]
        existing = [g for g, why in unchecked.items() if why is None]
    for graph in existing:  # the quick look: the stat record vouches for weights and graph alike (of what precision
        manifest = manifests[graph]  # the manifest says: a file_name load's record vouches for any graph it ran)
        if manifest.get("fingerprint") and manifest.get("precision") == precision \
                and _stat_unchanged(folder, graph, manifest["fingerprint"]):
            return GraphChoice(graph, manifest, exported=False), [], None, None
    from ..fingerprint import folder_fingerprint

    sources = Snapshot.take(folder)  # before hashing: a save while hashing or exporting leaves no record
    current = folder_fingerprint(folder)
    problems = list(refused)
    for graph in existing:
        manifest, problem = _usable(folder, graph, current, precision, sources)
        if manifest is not None:
            return GraphChoice(graph, manifest, exported=False), [], None, None
        problems.append(problem)
    return None, problems, current, sources


@contextmanager
def _holding(graph_folders) -> Iterator[None]:
    """Hold the locks of those of ``graph_folders`` that exist: no graph is placed there meanwhile."""
    with ExitStack() as stack:
        for folder in graph_folders:
            if folder.is_dir():
                stack.enter_context(folders.locked(folder, waiting=f"a graph being written into {folder}"))
        yield


def _export_graph(folder: Path, precision: str, candidates: list[Path], cache: Path, export: str,
                  exporter: Callable[[Path, str, Path | None], Path] | None, problems: list[Exception],
                  current: str, sources: "Snapshot") -> GraphChoice:
    if export == "never":
        raise _not_exporting(folder, precision, problems, current)
    out_dir = None if is_writable(folder) else cache
    target = candidates[0] if out_dir is None else candidates[1]
    for problem in problems:
        if isinstance(problem, NewerGraphError):
            if problem.graph == target:  # exporting would write over it
                raise problem
            logger.info("leaving alone %s", problem)
        else:
            logger.warning("%s: exporting the graph again", problem)
    if out_dir is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ModelFolderError(
                f"{folder} is read-only and the graph cache {cache} cannot be written ({e}); export the graph "
                f"where it can be written (`{layout.export_command(precision, out_dir='NEW_DIR')}`), or point the "
                "cache elsewhere with the ST_ONNX_CACHE environment variable or cache_folder="
            ) from e
    if exporter is None:
        raise GraphFileError(f"no exporter available to export the {precision} graph of {folder}")
    logger.info("exporting the fused %s graph of %s into %s (once: later loads reuse it)", precision, folder,
                out_dir or candidates[0].parent)
    graph = Path(exporter(folder, precision, out_dir))
    manifest = read_manifest(graph)
    if manifest.get("fingerprint") == current:
        record_stat(folder, graph, current, sources)
    return GraphChoice(graph, manifest, exported=True)


def _manifest_or_empty(graph: Path) -> dict[str, Any]:
    try:
        return read_manifest(graph)
    except NewerGraphError:
        raise
    except GraphFileError:
        return {}


def find_packed(folder: Path, padded: GraphChoice, *, export: str = "auto",
                cache_folder: str | os.PathLike | None = None,
                packer: Callable[[Path, Path, Path], Path] | None = None) -> GraphChoice:
    """The packing-mode graph made from ``padded`` (the fresh fp16 graph): reused while it was made from those
    very bytes (``content_digest``: the graph's sha256, and its data file's), else made again by
    ``packer(padded_graph, target, folder)``."""
    targets = [layout.packed_graph_path(padded.path)]
    cached = layout.packed_graph_path(layout.fused_graph_path(cache_dir_for(folder, cache_folder),
                                                              padded.manifest.get("precision", "fp16")))
    if cached != targets[0]:
        targets.append(cached)
    source = content_digest(padded.manifest)  # the graph's sha256, and its data file's if it has one
    problems, newer = [], {}
    for graph in targets:
        try:
            manifest = read_manifest(graph) if graph.is_file() else {}
        except NewerGraphError as e:  # not run; refused below only where packing would write over it
            newer[graph] = e
            continue
        if not (source and (manifest.get("packing") or {}).get("source_sha256") == source):
            continue
        if not _stat_unchanged(folder, graph, source):
            sources, checked = Snapshot.take(folder), _graph_signature(folder, graph)
            problem = graph_problem(graph, manifest)
            if problem:
                logger.warning("%s: packing again", problem)
                problems.append(problem)
                continue
            record_stat(folder, graph, source, sources, checked)
        return GraphChoice(graph, manifest, exported=False)
    if export == "never":
        problems += [str(e) for e in newer.values()]
        raise GraphFileError(
            f"no usable packed graph made from {padded.path} ({'; '.join(problems) or 'none found'}) and "
            "onnx_options['export'] is 'never'; load once with export='auto' (or drop packing)"
        )
    if packer is None:
        raise GraphFileError(f"no packer available to pack {padded.path}")
    target = targets[0] if os.access(padded.path.parent, os.W_OK) else cached
    if target in newer:
        raise newer[target]
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("packing %s into %s (once: later loads reuse it)", padded.path, target)
    graph = Path(packer(padded.path, target, folder))
    return GraphChoice(graph, read_manifest(graph), exported=True)


def _unchecked_graft(graph: Path, manifest: dict[str, Any]) -> StaleGraphError | None:
    """Grafts of the first layout took the folder's fingerprint without checking the graph against its weights:
    one grafted from a stale onnx/model.onnx computes another model (cosine -0.3), labelled fresh."""
    parity = manifest.get("parity")
    if (manifest.get("layout", 1) == 1 and str(manifest.get("exporter", "")).startswith("graft(")
            and not (isinstance(parity, dict) and parity.get("checked"))):
        return StaleGraphError(f"the fused graph {graph} was grafted by an older st-onnx, which took the folder's "
                               "fingerprint without checking the graph against its weights")
    return None


def _older_layout(graph: Path, manifest: dict[str, Any], tell: bool = True) -> bool:
    if not manifest:  # none, or unreadable: decided (re-exported) with the fingerprint
        return False
    found = manifest.get("layout", 1)  # manifests of the first st-onnx have no "layout"
    older = not isinstance(found, int) or found < layout.GRAPH_LAYOUT
    log = logger.info if tell else logger.debug
    if older:
        log("%s was exported by an older st-onnx (graph layout %s, now %s): same embeddings, slower; "
            "re-exporting it", graph, found, layout.GRAPH_LAYOUT)
    elif manifest.get("pooling_include_prompt") is False and PROMPT_LENGTH not in manifest.get("inputs", []):
        log("%s pools without the prompt's tokens but was exported without a prompt_length input (older "
            "st-onnx): re-exporting it", graph)
        return True
    return older


# -- a stat record that spares hashing the weights on every load (the bulk of a cold start) -------------------
def _stat_paths(graph: Path) -> list[Path]:
    """Where a graph's stat record may be: beside the graph, else (a read-only folder, whose every load would
    otherwise hash the weights again) under the graph cache, named after the graph's path."""
    key = hashlib.sha256(str(graph.resolve()).encode()).hexdigest()[:16]
    return [graph.with_name(graph.stem + ".stat.json"),
            default_cache_root() / "st_onnx_stat" / f"{graph.stem}-{key}.stat.json"]


def _entries(folder: Path, files: list[Path]) -> list:
    out = []
    for p in files:
        st = p.stat()
        out.append([os.path.relpath(p, folder), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return out


def _source_signature(folder: Path) -> list:
    """(file, size, mtime_ns, ctime_ns, inode) of every file the fingerprint hashes (symbolic links followed);
    ctime cannot be set back, so a file replaced by one with the same size and mtime (cp -p) still changes it."""
    from ..fingerprint import fingerprint_files

    return _entries(folder, fingerprint_files(folder))


def _graph_signature(folder: Path, graph: Path) -> list:
    """The same of the graph itself, its manifest (an edited manifest is checked again), and its weights file if
    it has one."""
    files = [graph, layout.manifest_path(graph), layout.graph_data_path(graph)]
    return _entries(folder, [f for f in files if f == graph or f.is_file()])


def _record_signature(folder: Path, graph: Path) -> list:
    return _source_signature(folder) + _graph_signature(folder, graph)


# A file changed this close before a snapshot may change again after it within the same timestamp tick (file
# times come from a coarse clock), unseen by the signature: such a snapshot vouches for nothing (git's "racily
# clean" entries, for the same reason).
RACY_NS = 1_000_000_000


@dataclass(frozen=True)
class Snapshot:
    """The fingerprinted files' signature, taken before they are hashed, and when."""
    files: list
    taken_ns: int

    @classmethod
    def take(cls, folder: Path) -> "Snapshot":
        return cls(_source_signature(folder), time.time_ns())

    def still(self, now: list) -> bool:
        """Whether ``now`` is this very signature, with no change too close to the snapshot to tell apart."""
        return now == self.files and all(max(e[2], e[3]) < self.taken_ns - RACY_NS for e in now)


def _stat_unchanged(folder: Path, graph: Path, fingerprint: str | None) -> bool:
    """Whether the stat record says: these weights (``fingerprint``) and this very graph file, checked before.
    The record is a cache: unreadable or missing, it only means checking again."""
    for path in _stat_paths(graph):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if (isinstance(record, dict) and record.get("fingerprint") == fingerprint
                    and record.get("folder") == str(folder.resolve())
                    and record.get("files") == _record_signature(folder, graph)):
                return True
        except (OSError, ValueError, ModelFolderError):
            continue
    return False


def record_stat(folder: Path, graph: Path, fingerprint: str | None, sources: Snapshot,
                 checked: list | None = None) -> None:
    """Record that the folder's files, as ``sources`` saw them before ``fingerprint`` was taken, go with this
    graph, as ``checked`` saw it before it was hashed (None: written by this process's export). Files changed
    since (another process saving while this one hashed or exported) leave no record: the next load hashes."""
    now = _source_signature(folder)
    graph_now = _graph_signature(folder, graph)
    if not sources.still(now) or (checked is not None and graph_now != checked):
        logger.debug("the files of %s changed while they were checked, or too recently to tell: no stat record",
                     folder)
        return
    record = {"fingerprint": fingerprint, "folder": str(folder.resolve()), "files": now + graph_now}
    for path in _stat_paths(graph):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            layout.write_json(path, record)
            return
        except OSError as e:  # a read-only folder: the cache's record; neither writable: the next load hashes
            logger.debug("cannot write %s (%s)", path, e)


def _named_graph(folder: Path, file_name: str) -> GraphChoice:
    graph = Path(file_name)
    if not graph.is_absolute():
        graph = folder / graph
    if not graph.is_file():
        what = "a folder" if graph.is_dir() else "something other than a file" if graph.exists() else "absent"
        raise GraphFileError(f"onnx_options['file_name'] names {graph}, which is {what}; allowed: a fused graph "
                             "file (such as 'onnx/st_onnx/int8.onnx'), relative to the model folder or absolute")
    manifest = read_manifest(graph)
    command = layout.export_command(manifest.get("precision") or layout.graph_precision(graph), folder, folder)
    sources = checked = None
    if manifest.get("fingerprint") and has_weights(folder):
        from ..fingerprint import folder_fingerprint

        if _stat_unchanged(folder, graph, manifest["fingerprint"]):  # these weights, this graph: checked before
            return GraphChoice(graph, manifest, exported=False)
        sources, checked = Snapshot.take(folder), _graph_signature(folder, graph)
        current = folder_fingerprint(folder)
        if manifest["fingerprint"] != current:
            raise StaleGraphError(
                f"the graph {graph} was exported from other weights (manifest {manifest['fingerprint']!r}, "
                f"folder now {current!r}); re-export it (`{command}`) or drop file_name"
            )
    problem = graph_problem(graph, manifest)
    if problem:
        raise GraphFileError(f"{problem}; re-export it (`{command}`) or drop file_name")
    if sources is not None:
        record_stat(folder, graph, manifest["fingerprint"], sources, checked)
    return GraphChoice(graph, manifest, exported=False)


def _not_exporting(folder: Path, precision: str, problems: list[Exception], current: str) -> Exception:
    command = layout.export_command(precision, folder, folder)
    # a newer st-onnx's graph is named only where nothing else is wrong (its message says what to do)
    problems = [p for p in problems if not isinstance(p, NewerGraphError)] or problems
    if problems and isinstance(problems[0], NewerGraphError):
        return problems[0]
    if problems:
        return type(problems[0])(
            f"{problems[0]}, and onnx_options['export'] is 'never'; re-export it (`{command}`) or load with "
            "export='auto'"
        )
    return GraphFileError(
        f"{folder} has no fused {precision} graph and onnx_options['export'] is 'never'; export it "
        f"(`{command}`) or load with export='auto'"
    )
