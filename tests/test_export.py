"""Graphs: a trace, an ONNX export or a torch.compile graph made at one input
size gives the eager outputs at any other size."""
import pytest
import torch

from mmrest import ResT

TINY = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 2, 1],
            num_heads=[1, 2, 4, 8], sr_ratios=[8, 4, 2, 1],
            mlp_ratios=[4, 4, 4, 4])
SIZES = [(96, 128), (64, 96), (97, 131), (33, 47)]  # the first is traced


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def tiny_model():
    torch.manual_seed(0)
    model = ResT(arch=TINY)
    model.init_weights()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith('running_mean'):
                buf.normal_(0, 0.1)
            elif name.endswith('running_var'):
                buf.uniform_(0.5, 1.5)
    return model.eval()


def float64_outputs(model, x):
    with torch.no_grad():
        outs = model.double()(x.double())
    model.float()
    return outs


def assert_matches_float64(outs, model, x, tolerance=1e-4):
    """Float32 outputs within float32 rounding of the float64 model (the
    float32 eager model's own error here is about 1e-6)."""
    for i, (a, b) in enumerate(zip(outs, float64_outputs(model, x))):
        assert tuple(a.shape) == tuple(b.shape), f'stage {i + 1}'
        assert rel(a, b) < tolerance, f'stage {i + 1}: {rel(a, b):.3g}'


def test_a_trace_holds_at_every_size():
    model = tiny_model()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, *SIZES[0]),
                                 check_trace=False)
    for size in SIZES:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert_matches_float64(traced(x), model, x)


@pytest.mark.parametrize('exporter', ['torchscript', 'dynamo'])
def test_onnx_export_runs_in_onnxruntime_at_other_sizes(exporter, tmp_path):
    pytest.importorskip('onnxruntime')
    if exporter == 'dynamo':
        pytest.importorskip('onnxscript')
    from mmrest.onnx_export import check_onnx, export_onnx
    model = tiny_model()
    path = str(tmp_path / 'rest.onnx')
    assert export_onnx(model, path, SIZES[0], exporter) == [
        'out0', 'out1', 'out2', 'out3']
    errors = check_onnx(path, model, SIZES)
    assert set(errors) == {f'{h}x{w}' for h, w in SIZES}
    for size, errs in errors.items():
        assert len(errs) == 4
        assert max(errs) < 1e-4, (size, errs)


def test_export_tool_backbone_and_neck(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    import importlib.util
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        'export_onnx', root / 'tools' / 'export_onnx.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / 'lite_fpn.onnx'
    code = tool.main([
        str(root / 'configs/retinanet/rest_lite_fpn_1x_coco.py'),
        '--with-neck', '--out', str(out), '--shape', '128', '160',
        '--check', '96x128', '65x97'
    ])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert out.is_file()
    assert '65x97' in printed and 'matches' in printed


def test_compile_has_no_graph_break():
    explanation = torch._dynamo.explain(tiny_model())(
        torch.randn(1, 3, 64, 96))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_graph_holds_at_other_sizes():
    """Dynamic shapes through dynamo and AOTAutograd (the ``aot_eager``
    backend: Inductor's C++ compilation takes minutes on two cores; ``make
    bench`` runs Inductor)."""
    model = tiny_model()
    compiled = torch.compile(model, backend='aot_eager', dynamic=True)
    for size in SIZES[1:]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert_matches_float64(compiled(x), model, x)


def test_inductor_gives_the_eager_outputs():
    model = tiny_model()
    compiled = torch.compile(model, dynamic=False)
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        assert_matches_float64(compiled(x), model, x)


def test_compiled_training_step_matches_eager():
    model = tiny_model().train()
    compiled = torch.compile(model, backend='aot_eager', dynamic=True)
    x = torch.randn(2, 3, 64, 96)
    grads = []
    for m in (model, compiled):
        model.zero_grad()
        outs = m(x)
        sum(o.square().mean() for o in outs).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if m is model:
            eager = [o.detach() for o in outs]
        else:
            for a, b in zip(outs, eager):
                assert rel(a.detach(), b) < 1e-4
    for g_compiled, g_eager in zip(grads[1], grads[0]):
        assert rel(g_compiled, g_eager) < 1e-3
