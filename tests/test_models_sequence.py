"""The sequence encoders (LSTMEncoder, TransformerEncoder) and Deep Speaker's ResCNN: sizes of the
systems they follow, padding invariance (garbage, NaN and inf in the padding included), gradients."""
import pytest
import torch

from mvector.models import build_backbone

pytestmark = pytest.mark.unit

# name -> (input size, arguments, backbone parameters). The LSTM at Resemblyzer's size has exactly
# its encoder's 1,423,616 parameters (40 mel bands, 3 x 256 LSTM, 256-d projection); ResCNN is
# Deep Speaker's size (about 24 M in its paper).
SYSTEMS = {
    "resemblyzer_lstm": (40, dict(name="LSTMEncoder", embd_dim=256, hidden_size=256, num_layers=3), 1_423_616),
    "course_bilstm": (40, dict(name="LSTMEncoder", embd_dim=128, hidden_size=64, num_layers=3, bidirectional=True,
                               projection_relu=False), 269_440),
    "course_transformer": (40, dict(name="TransformerEncoder", embd_dim=192, d_model=32, num_layers=2, num_heads=8),
                           38_784),
    "deep_speaker_rescnn": (64, dict(name="ResCNN", embd_dim=512), 23_379_136),
}


def build(system):
    input_size, arguments, _ = SYSTEMS[system]
    arguments = dict(arguments)
    return build_backbone(arguments.pop("name"), input_size, **arguments), input_size


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_parameter_counts(system):
    model, _ = build(system)
    assert sum(p.numel() for p in model.parameters()) == SYSTEMS[system][2]


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_padding_does_not_change_the_embedding(system):
    torch.manual_seed(0)
    model, dim = build(system)
    model.eval()
    short, long = torch.randn(1, 97, dim), torch.randn(1, 211, dim)
    garbage = torch.randn(1, 211 - 97, dim) * 10
    garbage[0, :3, :4] = float("nan")
    garbage[0, 5:7] = float("inf")
    batch = torch.cat([torch.cat([short, garbage], dim=1), long], dim=0)
    with torch.no_grad():
        alone_short, alone_long = model(short), model(long)
        together = model(batch, torch.tensor([97, 211]))
    cos = torch.nn.functional.cosine_similarity
    assert cos(alone_short, together[:1]).item() > 0.9999
    assert cos(alone_long, together[1:]).item() > 0.9999


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_a_training_step_gives_finite_gradients(system):
    model, dim = build(system)
    model(torch.randn(3, 80, dim), torch.tensor([80, 61, 40])).pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_one_frame_is_enough():
    for system in SYSTEMS:
        model, dim = build(system)
        assert model.eval()(torch.randn(1, 1, dim)).isfinite().all()
