"""Losses: the same embeddings and labels give sentence-transformers' loss values; forward runs the modules."""

from __future__ import annotations

import pytest
import torch

from st_onnx import InputExample, losses

pytestmark = pytest.mark.compat


class Stub(torch.nn.Module):
    """Stands in for the model when a loss is built: the maths is compared on given embeddings."""

    device = torch.device("cpu")

    def forward(self, features):
        return {"sentence_embedding": features["emb"]}


def st_losses():
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer import losses as theirs

    return theirs


def embeddings(n_columns: int, batch: int = 12, dim: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=g) for _ in range(n_columns)]


def compare(ours, theirs, embs, labels, **kw):
    a = ours.compute_loss_from_embeddings(embs, labels)
    b = theirs.compute_loss_from_embeddings(embs, labels)
    assert torch.isfinite(a)
    assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-6)


FLOAT_LABELS = torch.rand(12, generator=torch.Generator().manual_seed(1))
BINARY_LABELS = torch.tensor([1, 0] * 6)


def test_cosine_similarity_loss():
    t = st_losses()
    compare(losses.CosineSimilarityLoss(Stub()), t.CosineSimilarityLoss(Stub()), embeddings(2), FLOAT_LABELS)
    l1 = torch.nn.L1Loss()
    compare(losses.CosineSimilarityLoss(Stub(), loss_fct=l1), t.CosineSimilarityLoss(Stub(), loss_fct=l1),
            embeddings(2), FLOAT_LABELS)


@pytest.mark.parametrize("scale", [20.0, 5.0])
def test_cosent_loss(scale):
    t = st_losses()
    labels = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.2, 0.0, 1.0, 0.5, 0.3, 0.3, 0.7, 0.8])
    compare(losses.CoSENTLoss(Stub(), scale=scale), t.CoSENTLoss(Stub(), scale=scale), embeddings(2), labels)


@pytest.mark.parametrize("columns", [2, 3])
def test_multiple_negatives_ranking_loss(columns):
    t = st_losses()
    compare(losses.MultipleNegativesRankingLoss(Stub()), t.MultipleNegativesRankingLoss(Stub()),
            embeddings(columns), torch.zeros(12))
    compare(losses.MultipleNegativesRankingLoss(Stub(), scale=1.0), t.MultipleNegativesRankingLoss(Stub(), scale=1.0),
            embeddings(columns, seed=3), torch.zeros(12))
    with pytest.raises(ValueError, match="positive"):
        losses.MultipleNegativesRankingLoss(Stub(), scale=0)


@pytest.mark.parametrize("multiplication", [False, True])
def test_softmax_loss(multiplication):
    t = st_losses()
    ours = losses.SoftmaxLoss(Stub(), sentence_embedding_dimension=16, num_labels=3,
                              concatenation_sent_multiplication=multiplication)
    theirs = t.SoftmaxLoss(Stub(), 16, 3, concatenation_sent_multiplication=multiplication)
    ours.classifier.load_state_dict(theirs.classifier.state_dict())
    features = [{"emb": e} for e in embeddings(2)]
    labels = torch.tensor([0, 1, 2] * 4)
    assert ours(features, labels).item() == pytest.approx(theirs(features, labels).item(), rel=1e-5)
    reps, logits = ours(features, None)
    assert logits.shape == (12, 3) and len(reps) == 2
    assert [n for n, _ in ours.named_parameters()] == ["classifier.weight", "classifier.bias"]
    with pytest.raises(ValueError, match="num_labels"):
        losses.SoftmaxLoss(Stub(), sentence_embedding_dimension=16, num_labels=0)


@pytest.mark.parametrize("metric", ["EUCLIDEAN", "MANHATTAN", "COSINE_DISTANCE"])
def test_contrastive_losses(metric):
    t = st_losses()
    ours_metric = getattr(losses.SiameseDistanceMetric, metric)
    their_metric = getattr(t.SiameseDistanceMetric, metric)
    for size_average in (True, False):
        compare(losses.ContrastiveLoss(Stub(), ours_metric, margin=2.0, size_average=size_average),
                t.ContrastiveLoss(Stub(), their_metric, margin=2.0, size_average=size_average),
                embeddings(2), BINARY_LABELS)
    compare(losses.OnlineContrastiveLoss(Stub(), ours_metric, margin=4.0),
            t.OnlineContrastiveLoss(Stub(), their_metric, margin=4.0), embeddings(2), BINARY_LABELS)
    compare(losses.OnlineContrastiveLoss(Stub()), t.OnlineContrastiveLoss(Stub()), embeddings(2), BINARY_LABELS)
    features = [{"emb": e} for e in embeddings(2)]  # 2.x's and 6's forward take an unused size_average
    ours, theirs = losses.OnlineContrastiveLoss(Stub()), t.OnlineContrastiveLoss(Stub())
    for size_average in (False, True):
        assert ours(features, BINARY_LABELS, size_average=size_average).item() == pytest.approx(
            theirs(features, BINARY_LABELS, size_average=size_average).item(), rel=1e-5)


@pytest.mark.parametrize("metric", ["EUCLIDEAN", "MANHATTAN", "COSINE"])
def test_triplet_loss(metric):
    t = st_losses()
    compare(losses.TripletLoss(Stub(), getattr(losses.TripletDistanceMetric, metric), triplet_margin=1.0),
            t.TripletLoss(Stub(), getattr(t.TripletDistanceMetric, metric), triplet_margin=1.0),
            embeddings(3), torch.zeros(12))


def test_mse_loss():
    t = st_losses()
    teacher = embeddings(1, seed=9)[0]
    per_column = torch.stack(embeddings(2, seed=5), dim=1)
    for columns, labels in ((1, teacher), (2, teacher), (2, per_column)):
        features = [{"emb": e} for e in embeddings(columns)]
        ours = losses.MSELoss(Stub())(features, labels)
        assert ours.item() == pytest.approx(t.MSELoss(Stub())(features, labels).item(), rel=1e-5)
    with pytest.raises(ValueError, match="teacher embeddings"):
        losses.MSELoss(Stub()).compute_loss_from_embeddings(embeddings(1), torch.zeros(12))


def test_label_count_is_checked():
    with pytest.raises(ValueError, match="labels"):
        losses.CosineSimilarityLoss(Stub()).compute_loss_from_embeddings(embeddings(2), torch.zeros(5))


@pytest.mark.parametrize("make", [
    lambda m: losses.ContrastiveLoss(m), lambda m: losses.OnlineContrastiveLoss(m),
    lambda m: losses.CosineSimilarityLoss(m), lambda m: losses.CoSENTLoss(m), lambda m: losses.SoftmaxLoss(m, 16, 2),
], ids=["contrastive", "online_contrastive", "cosine", "cosent", "softmax"])
@pytest.mark.parametrize("n_columns", [1, 3])
def test_pair_losses_refuse_another_number_of_text_columns(make, n_columns):
    """Triplet data fed to ContrastiveLoss trained on the first two columns with label 0 (pushing each anchor
    from its positive), silently; one column failed with an IndexError."""
    from st_onnx.errors import InvalidInputError

    features = [{"emb": e} for e in embeddings(n_columns, batch=6)]
    with pytest.raises(InvalidInputError, match=rf"2 text columns per InputExample; got {n_columns}"):
        make(Stub())(features, torch.tensor([1, 0, 1, 0, 1, 0]))


@pytest.mark.parametrize("make", [
    lambda m: losses.ContrastiveLoss(m, distance_metric="euclidean"),
    lambda m: losses.OnlineContrastiveLoss(m, distance_metric="euclidean"),
    lambda m: losses.TripletLoss(m, distance_metric="euclidean"),
], ids=["contrastive", "online_contrastive", "triplet"])
def test_a_distance_metric_by_name_is_refused_when_the_loss_is_built(make):
    """It failed at the first training step with "'str' object is not callable"."""
    with pytest.raises(ValueError, match=r"distance_metric must be a \w+DistanceMetric member.*got 'euclidean'"):
        make(Stub())


def test_collate_names_a_label_torch_cannot_hold(tiny_model_dir):
    from st_onnx import SentenceTransformer
    from st_onnx.errors import InvalidInputError

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(InvalidInputError, match=r"labels must be numbers.*\['0.5', '0.5'\]"):
        model.smart_batching_collate([InputExample(texts=["a cat", "a dog"], label="0.5")] * 2)


def test_forward_runs_the_torch_modules_and_gradients_reach_them(tiny_model_dir):
    from st_onnx import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    batch = [InputExample(texts=["the cat sleeps", "a dog runs", "fish swims"], label=0.5),
             InputExample(texts=["a man plays music", "the man sings", "the car is red"], label=0.9)]
    features, labels = model.smart_batching_collate(batch)
    assert len(features) == 3 and labels.tolist() == pytest.approx([0.5, 0.9])
    loss = losses.MultipleNegativesRankingLoss(model)
    assert list(loss.parameters()) == []  # the model's parameters are fit's to collect, not the loss's
    value = loss(features, labels)
    value.backward()
    grads = [p.grad for p in model.torch_modules.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    emb = [model(f)["sentence_embedding"] for f in features]
    assert value.item() == pytest.approx(loss.compute_loss_from_embeddings(emb, labels).item(), rel=1e-5)


def test_contrastive_losses_warn_once_about_labels_other_than_0_and_1():
    """STS-style scores: OnlineContrastiveLoss would leave every such pair out (a loss of 0, nothing trains)."""
    import warnings

    scores = torch.tensor([0.2, 0.8, 1.0, 0.0] * 3)
    for loss, says in ((losses.ContrastiveLoss(Stub()), "weights the positive term"),
                       (losses.OnlineContrastiveLoss(Stub()), "left out of the loss")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss.compute_loss_from_embeddings(embeddings(2), BINARY_LABELS)
            assert not caught  # 0/1 labels: nothing to say
            loss.compute_loss_from_embeddings(embeddings(2), scores)
            loss.compute_loss_from_embeddings(embeddings(2), scores)
        assert len(caught) == 1 and says in str(caught[0].message) and "0.2" in str(caught[0].message)


def test_a_loss_that_wraps_model_forward_sees_its_wrapper_run(tiny_model_dir):
    """sentence-transformers' MatryoshkaLoss swaps ``model.forward`` to truncate the embeddings it trains on; a
    model(features) that bypassed forward trained every dimension at full size (3 x the full loss)."""
    st = pytest.importorskip("sentence_transformers")
    from st_onnx import SentenceTransformer

    texts = [["the cat sleeps", "a cat is sleeping"], ["a man plays music", "the man sings"],
             ["the car is red", "a red car"], ["fish swims", "the fish swims fast"]]
    dims = [32, 16, 8]
    values = []
    for model in (SentenceTransformer(str(tiny_model_dir), device="cpu"),
                  st.SentenceTransformer(str(tiny_model_dir), device="cpu")):
        model.eval()
        features, labels = model.smart_batching_collate([InputExample(texts=t) for t in texts])
        inner = st_losses().MultipleNegativesRankingLoss(model)
        values.append(st_losses().MatryoshkaLoss(model, inner, dims)(features, labels).item())
        full = inner(features, labels).item()
    assert values[0] == pytest.approx(values[1], rel=1e-5)
    assert values[0] != pytest.approx(3 * full, rel=1e-4)
