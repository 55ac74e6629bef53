"""Losses against their formulas written out by hand on tiny tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from mvector.errors import ConfigError
from mvector.losses import LOSSES, AAMLoss, AMLoss, ARMLoss, CELoss, MarginScheduler, SphereFace2, \
    SubCenterLoss, TripletAngularMarginLoss, build_loss
from mvector.models.classifier import CosineClassifier

pytestmark = pytest.mark.unit

COS = torch.tensor([[0.70, -0.20, 0.10],
                    [0.30, 0.55, -0.90],
                    [-0.40, 0.20, 0.85],
                    [0.05, 0.60, -0.30]])
LABELS = torch.tensor([0, 1, 2, 0])


def cross_entropy_by_hand(logit_rows, labels):
    total = 0.0
    for row, label in zip(logit_rows, labels):
        total += math.log(sum(math.exp(z) for z in row)) - row[label]
    return total / len(labels)


def test_aam_with_zero_margin_is_scaled_cosine_cross_entropy():
    loss = AAMLoss(margin=0.0, scale=16)(COS, LABELS)
    assert torch.allclose(loss, F.cross_entropy(16 * COS, LABELS), atol=1e-5)


def test_aam_target_logit_is_scaled_cos_of_angle_plus_margin():
    s, m = 32.0, 0.3
    aam = AAMLoss(margin=m, scale=s)
    logits = aam.margin_logits(COS, LABELS)
    rows = []
    for i, label in enumerate(LABELS.tolist()):
        row = []
        for j in range(COS.shape[1]):
            c = COS[i, j].item()
            # all targets here have theta + m < pi, where cos(theta + m) is used directly
            row.append(s * math.cos(math.acos(c) + m) if j == label else s * c)
        rows.append(row)
    assert torch.allclose(logits, torch.tensor(rows), atol=1e-4)
    assert math.isclose(aam(COS, LABELS).item(), cross_entropy_by_hand(rows, LABELS.tolist()), rel_tol=1e-5)


def test_aam_past_pi_minus_margin_uses_linear_fallback_and_easy_margin_keeps_negative_cosines():
    m = 0.5
    cos = torch.tensor([[-0.95, 0.1], [-0.3, 0.2]])
    labels = torch.tensor([0, 0])
    threshold = math.cos(math.pi - m)
    assert -0.95 < threshold  # first target lies past pi - m
    hard = AAMLoss(margin=m, scale=1.0).margin_logits(cos, labels)
    assert math.isclose(hard[0, 0].item(), -0.95 - (1 + threshold), rel_tol=1e-5)
    assert math.isclose(hard[1, 0].item(), math.cos(math.acos(-0.3) + m), rel_tol=1e-5)
    easy = AAMLoss(margin=m, scale=1.0, easy_margin=True).margin_logits(cos, labels)
    assert torch.allclose(easy[:, 0], cos[:, 0])


def test_am_is_cross_entropy_of_scaled_cosine_minus_margin():
    s, m = 30.0, 0.25
    rows = [[s * (c - m) if j == label else s * c for j, c in enumerate(row)]
            for row, label in zip(COS.tolist(), LABELS.tolist())]
    got = AMLoss(margin=m, scale=s)(COS, LABELS).item()
    assert math.isclose(got, cross_entropy_by_hand(rows, LABELS.tolist()), rel_tol=1e-5)


@pytest.mark.parametrize("loss_class", [AAMLoss, AMLoss, SubCenterLoss])
def test_label_smoothing_matches_its_definition_and_torch(loss_class):
    eps, s = 0.1, 8.0
    loss = loss_class(margin=0.0, scale=s, label_smoothing=eps)(COS, LABELS).item()
    log_p = F.log_softmax(s * COS.double(), dim=1)
    by_hand = ((1 - eps) * -log_p.gather(1, LABELS[:, None]).squeeze(1) - eps * log_p.mean(dim=1)).mean()
    assert math.isclose(loss, by_hand.item(), rel_tol=1e-5)
    assert math.isclose(loss, F.cross_entropy(s * COS, LABELS, label_smoothing=eps).item(), rel_tol=1e-5)


def test_ce_loss_is_torch_cross_entropy_on_logits():
    logits = torch.randn(5, 7) * 3
    labels = torch.tensor([0, 6, 3, 3, 1])
    assert torch.allclose(CELoss(label_smoothing=0.2)(logits, labels),
                          F.cross_entropy(logits, labels, label_smoothing=0.2))
    assert CELoss.input_type == "logits"


def test_arm_keeps_only_margin_violating_non_targets():
    s, m = 10.0, 0.3
    rows = []
    for row, label in zip(COS.tolist(), LABELS.tolist()):
        target = s * (row[label] - m)
        rows.append([target if j == label else (s * c if s * c >= target else 0.0) for j, c in enumerate(row)])
    # the fixture has both kinds of non-target: e.g. row 3 (0.60 vs 0.05 - m) violates, row 0 does not
    assert rows[3][1] != 0.0 and rows[0][1] == 0.0
    got = ARMLoss(margin=m, scale=s)(COS, LABELS).item()
    assert math.isclose(got, cross_entropy_by_hand(rows, LABELS.tolist()), rel_tol=1e-5)


@pytest.mark.parametrize("margin_type", ["A", "C"])
def test_sphereface2_matches_its_formula(margin_type):
    s, m, lam, t, bias = 32.0, 0.2, 0.7, 3, 0.3
    loss = SphereFace2(margin=m, scale=s, lanbuda=lam, t=t, margin_type=margin_type)
    with torch.no_grad():
        loss.bias.fill_(bias)

    def g(z):
        return 2 * ((z + 1) / 2) ** t - 1

    def softplus(x):
        return math.log1p(math.exp(x))

    total = 0.0
    for row, label in zip(COS.tolist(), LABELS.tolist()):
        for j, c in enumerate(row):
            theta = math.acos(c)
            if margin_type == "C":
                p, n = s * (g(c) - m) + bias, s * (g(c) + m) + bias
            else:  # no target here lies past pi - m, so cos(theta + m) applies directly
                p, n = s * g(math.cos(theta + m)) + bias, s * g(math.cos(theta - m)) + bias
            total += lam * softplus(-p) if j == label else (1 - lam) * softplus(n)
    expected = total / len(LABELS)
    assert math.isclose(loss(COS, LABELS).item(), expected, rel_tol=1e-5)


def test_sphereface2_bias_is_learnable():
    loss = SphereFace2()
    loss(COS, LABELS).backward()
    assert loss.bias.grad is not None and loss.bias.grad.abs().item() > 0


def test_subcenter_with_one_centre_equals_aam():
    torch.manual_seed(0)
    head = CosineClassifier(6, 3, num_centers=1)
    cos = head(torch.randn(4, 6))
    assert torch.allclose(SubCenterLoss(margin=0.2, scale=32)(cos, LABELS),
                          AAMLoss(margin=0.2, scale=32)(cos, LABELS))


def test_subcenter_on_three_centre_head_is_aam_on_best_centre():
    torch.manual_seed(0)
    head = CosineClassifier(6, 3, num_centers=3)
    x = torch.randn(4, 6)
    per_centre = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).t()
    best = per_centre.view(4, 3, 3).max(dim=2).values
    assert torch.allclose(SubCenterLoss()(head(x), LABELS), AAMLoss()(best, LABELS), atol=1e-5)


def test_triplet_is_zero_for_classes_separated_beyond_margin_and_positive_otherwise():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    separated = torch.eye(3).repeat_interleave(2, dim=0) * 5.0  # same class: cos 1, others: cos 0
    loss = TripletAngularMarginLoss(margin=0.5, add_class_loss=False)
    assert loss(None, labels, separated).item() == 0.0

    close = separated.clone()
    close[1] = torch.tensor([1.0, 1.0, 0.0])  # cos 0.707 to its positive and to class 1
    assert loss(None, labels, close).item() > 0.0


def test_triplet_ranking_term_by_hand():
    e = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    sim = (e @ e.t()).tolist()
    m = 0.5
    expected = 0.0
    for a in range(4):
        pos = min(sim[a][p] for p in range(4) if labels[p] == labels[a])
        neg = max(sim[a][n] for n in range(4) if labels[n] != labels[a])
        expected += max(0.0, neg - pos + m)
    loss = TripletAngularMarginLoss(margin=m, add_absolute=False, add_class_loss=False)
    assert math.isclose(loss(None, labels, e).item(), expected / 4, rel_tol=1e-5)


def test_triplet_adds_aam_class_loss_and_needs_embeddings():
    e = torch.randn(4, 5)
    with_class = TripletAngularMarginLoss(class_loss_scale=16, class_loss_margin=0.1)
    without = TripletAngularMarginLoss(add_class_loss=False)
    expected = without(None, LABELS, e) + AAMLoss(margin=0.1, scale=16)(COS, LABELS)
    assert torch.allclose(with_class(COS, LABELS, e), expected)
    assert with_class.needs_embeddings and not AAMLoss.needs_embeddings
    with pytest.raises(ConfigError, match="embeddings"):
        with_class(COS, LABELS)


def _margin_losses():
    return [AAMLoss(), AAMLoss(easy_margin=True), AMLoss(), ARMLoss(), SphereFace2(margin_type="A"),
            SphereFace2(margin_type="C"), SubCenterLoss(), TripletAngularMarginLoss()]


@pytest.mark.parametrize("loss", _margin_losses(), ids=lambda loss: type(loss).__name__)
def test_gradients_finite_at_cosine_plus_minus_one(loss):
    cos = torch.tensor([[1.0, -1.0, 0.3], [-1.0, 1.0, -1.0], [1.0, 1.0, -1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 2])
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    value = loss(cos, labels, emb) if loss.needs_embeddings else loss(cos, labels)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(cos.grad).all()
    if loss.needs_embeddings:
        assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("loss", _margin_losses(), ids=lambda loss: type(loss).__name__)
def test_bf16_autocast_computes_in_float32(loss):
    emb = torch.randn(4, 8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = COS.bfloat16()
        value = loss(low, LABELS, emb.bfloat16()) if loss.needs_embeddings else loss(low, LABELS)
    ref = loss(low.float(), LABELS, emb.bfloat16().float()) if loss.needs_embeddings else loss(low.float(), LABELS)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.allclose(value, ref, atol=1e-5)


def test_update_sets_margin_used_in_forward():
    loss = AAMLoss(margin=0.4, scale=16)
    loss.update(0.0)
    assert loss.margin == 0.0
    assert torch.allclose(loss(COS, LABELS), F.cross_entropy(16 * COS, LABELS), atol=1e-5)


def test_registry_lists_every_loss_and_rejects_unknown_names_and_keys():
    assert set(LOSSES) == {"AAMLoss", "AMLoss", "ARMLoss", "CELoss", "GE2ELoss", "SphereFace2", "SubCenterLoss",
                           "TripletAngularMarginLoss", "TripletLoss"}
    assert isinstance(build_loss("AMLoss", margin=0.1), AMLoss)
    with pytest.raises(ConfigError, match="AAMLoss.*SphereFace2"):
        build_loss("ArcFace")
    with pytest.raises(ConfigError, match="'margn'"):
        build_loss("AAMLoss", margn=0.2)


@pytest.mark.parametrize("name,kwargs", [("SphereFace2", {"margin_type": "B"}), ("AAMLoss", {"scale": 0}),
                                         ("AMLoss", {"label_smoothing": 1.0}), ("AAMLoss", {"margin": -0.1}),
                                         ("SphereFace2", {"t": 2.5})])
def test_invalid_values_raise_config_error(name, kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        build_loss(name, **kwargs)


def test_bad_labels_raise_config_error():
    with pytest.raises(ConfigError, match="labels"):
        AAMLoss()(COS, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ConfigError, match="labels"):
        AAMLoss()(COS, torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="labels"):
        AAMLoss()(COS, LABELS.float())


@pytest.mark.parametrize("increase_type", ["linear", "exp"])
def test_margin_scheduler_values(increase_type):
    loss = AAMLoss(margin=0.2)
    sched = MarginScheduler(loss, initial_margin=0.0, final_margin=0.2, increase_start_step=100,
                            fix_start_step=300, increase_type=increase_type)
    assert loss.margin == 0.0  # applied on construction
    assert sched.step(50) == 0.0 and loss.margin == 0.0
    assert sched.step(100) == 0.0
    middle = 0.1 if increase_type == "linear" else 0.2 * (1 - 1e-3 ** 0.5) / (1 - 1e-3)
    assert math.isclose(sched.step(200), middle, rel_tol=1e-9) and math.isclose(loss.margin, middle)
    assert math.isclose(sched.step(299), sched.margin_at(299)) and sched.margin_at(299) < 0.2
    assert sched.step(300) == 0.2 and sched.step(10_000) == 0.2 and loss.margin == 0.2


def test_margin_scheduler_state_round_trip_restores_margin():
    sched = MarginScheduler(AAMLoss(), 0.0, 0.3, 10, 20, "linear")
    sched.step(15)
    state = sched.state_dict()
    fresh_loss = SphereFace2()
    fresh = MarginScheduler(fresh_loss, 0.0, 0.3, 10, 20, "linear")
    assert fresh_loss.margin == 0.0
    fresh.load_state_dict(state)
    assert fresh_loss.margin == pytest.approx(0.15) and fresh.last_step == 15
    with pytest.raises(ConfigError, match="margin"):
        fresh.load_state_dict({"last_step": 3})


def test_margin_scheduler_rejects_bad_configuration():
    with pytest.raises(ConfigError, match="CELoss"):
        MarginScheduler(CELoss(), 0.0, 0.2, 0, 10)
    with pytest.raises(ConfigError, match="increase_type.*exp, linear"):
        MarginScheduler(AAMLoss(), 0.0, 0.2, 0, 10, increase_type="cosine")
    with pytest.raises(ConfigError, match="fix_start_step"):
        MarginScheduler(AAMLoss(), 0.0, 0.2, 10, 5)


# ----- losses on P x K batches ------------------------------------------------------------------


def pk_batch(speakers=4, utterances=3, dim=16, spread=0.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(speakers, dim, generator=generator)
    embeddings = centres.repeat_interleave(utterances, 0) + spread * torch.randn(speakers * utterances, dim,
                                                                                   generator=generator)
    return embeddings, torch.arange(speakers).repeat_interleave(utterances)


def test_ge2e_matches_its_definition_written_out():
    """The softmax GE2E loss computed with loops over speakers and utterances, as in the paper."""
    embeddings, labels = pk_batch(spread=1.0)
    loss = build_loss("GE2ELoss", init_scale=7.0, init_bias=-2.0)
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    groups = unit.reshape(4, 3, -1)
    total = 0.0
    for j in range(4):
        for i in range(3):
            row = []
            for k in range(4):
                members = groups[k] if k != j else torch.cat([groups[k][:i], groups[k][i + 1:]])
                centroid = torch.nn.functional.normalize(members.sum(0), dim=0)
                row.append(7.0 * torch.dot(groups[j, i], centroid) - 2.0)
            total += -torch.log_softmax(torch.stack(row), 0)[j]
    assert loss(None, labels, embeddings).item() == pytest.approx(total.item() / 12, rel=1e-5)


def test_ge2e_scale_and_bias_are_learnt():
    embeddings, labels = pk_batch(spread=1.0)
    loss = build_loss("GE2ELoss")
    loss(None, labels, embeddings.requires_grad_()).backward()
    assert loss.scale.grad is not None and loss.bias.grad is not None and loss.state_dict()


def test_plain_triplet_loss_on_cosines():
    embeddings, labels = pk_batch(speakers=2, utterances=2, dim=2)
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # each speaker's two disagree
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: positive 1 (cos 0), negatives 2 (cos 1), 3 (cos 0): relu(1 - 0 + .1) + relu(0 - 0 + .1)
    assert build_loss("TripletLoss", margin=0.1)(None, labels, embeddings).item() == pytest.approx((1.1 + 0.1) / 2)
    separated, labels = pk_batch(spread=0.0)
    assert build_loss("TripletLoss", margin=0.1)(None, labels, separated).item() == 0.0


@pytest.mark.parametrize("name", ["GE2ELoss", "TripletLoss"])
def test_losses_on_speaker_batches_refuse_other_batches(name):
    with pytest.raises(ConfigError, match="needs P x K batches"):
        build_loss(name)(None, torch.tensor([0, 0, 1]), torch.randn(3, 8))
    with pytest.raises(ConfigError, match="needs P x K batches"):
        build_loss(name)(None, torch.tensor([0, 1, 2]), torch.randn(3, 8))
