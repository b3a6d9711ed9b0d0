"""mmrest.utils.torch_compat: the same answers from the torch >= 2.x APIs
and from their torch 2.1 replacements (each replacement forced here on the
installed torch, and checked against what is actually the case)."""
import pytest
import torch
from _helpers import assert_float64_equal

from mmrest.utils import torch_compat


@pytest.mark.parametrize('version, expected',
                         [('2.1.2+cu121', (2, 1)), ('2.13.0', (2, 13)),
                          ('2.6.0a0+git1234', (2, 6)),
                          ('2.10.0.dev20260101', (2, 10))])
def test_torch_version(monkeypatch, version, expected):
    monkeypatch.setattr(torch, '__version__', version)
    assert torch_compat.torch_version() == expected


@pytest.mark.parametrize('takes_device', [True, False])
def test_is_autocast_enabled(monkeypatch, takes_device):
    """With and without the device argument (torch < 2.4), CPU autocast is
    reported inside its block and nowhere else."""
    if takes_device and not torch_compat._AUTOCAST_TAKES_DEVICE:
        pytest.skip('torch < 2.4: is_autocast_enabled takes no device')
    monkeypatch.setattr(torch_compat, '_AUTOCAST_TAKES_DEVICE', takes_device)
    assert not torch_compat.is_autocast_enabled('cpu')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch_compat.is_autocast_enabled('cpu')
        assert not torch_compat.is_autocast_enabled('cuda')
        with torch.autocast('cpu', enabled=False):
            assert not torch_compat.is_autocast_enabled('cpu')
    assert not torch_compat.is_autocast_enabled('cpu')
    if not takes_device:  # a device torch < 2.4 has no query for
        assert not torch_compat.is_autocast_enabled('no_such_device')


def test_is_compiling_inside_torch_compile():
    """False in eager mode, True while torch.compile traces (the graph
    records the branch taken)."""
    assert not torch_compat.is_compiling()

    def f(x):
        return x + 1 if torch_compat.is_compiling() else x - 1

    x = torch.zeros(3)
    assert torch.equal(f(x), x - 1)
    assert torch.equal(torch.compile(f, backend='eager')(x), x + 1)


def test_is_compiling_fallback_is_torch_dynamo():
    """The torch < 2.3 replacement is dynamo's own flag, where torch has
    it; on a torch with torch.compiler.is_compiling that is the one used."""
    function = torch_compat._is_compiling_function()
    compiler = getattr(torch.compiler, 'is_compiling', None)
    if compiler is not None:
        assert function is compiler
    else:
        from torch._dynamo import is_compiling
        assert function is is_compiling


def test_onnx_export_has_dynamo_matches_the_signature():
    import inspect
    has = 'dynamo' in inspect.signature(torch.onnx.export).parameters
    assert torch_compat.ONNX_EXPORT_HAS_DYNAMO is has
    assert has == (torch_compat.torch_version() >= (2, 5))


def test_scoped_allow_list_flag():
    assert torch_compat.TORCH_SCOPED_ALLOW_LIST == (
        torch_compat.torch_version() >= (2, 6))
    if torch_compat.TORCH_SCOPED_ALLOW_LIST:
        assert hasattr(torch.serialization, 'safe_globals')


def test_grad_scaler_without_torch_amp(monkeypatch):
    """Before torch.amp.GradScaler (torch < 2.3) a CUDA scaler is
    torch.cuda.amp's, and another device is an error that says why."""
    if hasattr(torch, 'amp') and hasattr(torch.amp, 'GradScaler'):
        scaler = torch_compat.grad_scaler('cpu')
        assert isinstance(scaler, torch.amp.GradScaler)
        monkeypatch.delattr(torch.amp, 'GradScaler')
    with pytest.raises(RuntimeError, match=r"'cpu'.*torch >= 2\.3"):
        torch_compat.grad_scaler('cpu')
    import warnings
    with warnings.catch_warnings():  # no CUDA here; deprecated on new torch
        warnings.simplefilter('ignore')
        scaler = torch_compat.grad_scaler('cuda')
    assert type(scaler).__module__.startswith('torch.')
    assert hasattr(scaler, 'scale') and hasattr(scaler, 'step')
    # disabled (no autocast): a pass-through on any device
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        scaler = torch_compat.grad_scaler('cpu', enabled=False)
    param = torch.ones(2, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.5)
    loss = (param * 3).sum()
    assert scaler.scale(loss) is loss
    loss.backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(param.detach(), torch.full((2, ), -0.5))


def test_cpu_fused_adamw_flag():
    """The flag says whether AdamW(fused=True) takes CPU parameters."""
    param = torch.zeros(2, requires_grad=True)
    try:
        torch.optim.AdamW([param], fused=True)
        works = True
    except RuntimeError:
        works = False
    assert torch_compat.CPU_FUSED_ADAMW is works


@pytest.mark.parametrize('has_cpu_fused', [True, False])
def test_drop_unsupported_fused(monkeypatch, has_cpu_fused):
    """fused=True goes only for the CPU on a torch without the CPU kernel;
    the rest of the optimizer config stays."""
    monkeypatch.setattr(torch_compat, 'CPU_FUSED_ADAMW', has_cpu_fused)
    cfg = dict(type='AdamW', lr=1e-3, fused=True)
    assert torch_compat.drop_unsupported_fused(cfg,
                                               'cpu') is (not has_cpu_fused)
    assert cfg == (
        dict(type='AdamW', lr=1e-3, fused=True) if has_cpu_fused else dict(
            type='AdamW', lr=1e-3))
    cfg = dict(type='AdamW', lr=1e-3, fused=True)
    assert not torch_compat.drop_unsupported_fused(cfg, 'cuda')
    assert cfg['fused'] is True
    cfg = dict(type='AdamW', lr=1e-3)
    assert not torch_compat.drop_unsupported_fused(cfg, 'cpu')
    assert cfg == dict(type='AdamW', lr=1e-3)


@pytest.mark.parametrize('old_torch', [False, True])
def test_sdpa_backend(monkeypatch, old_torch):
    """One SDPA backend alone: through torch.nn.attention (torch >= 2.3) or,
    before it (forced here), torch.backends.cuda.sdp_kernel's flags; a
    backend this torch lacks is None. On the CPU the math backend runs the
    attention, and only it."""
    import warnings

    import torch.nn.functional as F
    if old_torch:
        monkeypatch.setattr(torch_compat, '_sdpa_kernel_api', lambda: None)
    if torch_compat._sdpa_kernel_api() is None:
        assert torch_compat.sdpa_backend('CUDNN_ATTENTION') is None
    assert torch_compat.sdpa_backend('NO_SUCH_BACKEND') is None
    q, k, v = (
        torch.randn(1, 2, 5, 4,
                    generator=torch.Generator().manual_seed(i)).double()
        for i in range(3))
    exact = torch.softmax(q @ k.transpose(-1, -2) / 2, -1) @ v
    with warnings.catch_warnings():  # sdp_kernel is deprecated on new torch
        warnings.simplefilter('ignore')
        with torch_compat.sdpa_backend('MATH'):
            out = F.scaled_dot_product_attention(q, k, v)
        assert_float64_equal(out, exact, 'math backend')
        if not old_torch:  # torch.nn.attention: the CPU has no flash here
            with pytest.raises(RuntimeError):
                with torch_compat.sdpa_backend('EFFICIENT_ATTENTION'):
                    F.scaled_dot_product_attention(q.float(), k.float(),
                                                   v.float())


def test_sdpa_backend_before_torch_2_3_sets_one_flag(monkeypatch):
    """Before torch.nn.attention (forced here): sdp_kernel with the named
    backend's flag on and the others off."""
    import contextlib
    monkeypatch.setattr(torch_compat, '_sdpa_kernel_api', lambda: None)
    calls = []

    def sdp_kernel(**flags):
        calls.append(flags)
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.backends.cuda, 'sdp_kernel', sdp_kernel)
    torch_compat.sdpa_backend('EFFICIENT_ATTENTION')
    assert calls == [
        dict(enable_flash=False, enable_mem_efficient=True, enable_math=False)
    ]


def test_autocast_probe(monkeypatch):
    """The probe asks torch itself: True where ``is_autocast_enabled``
    takes a device (torch >= 2.4), False where it takes none (forced here
    with a stand-in of torch 2.1's signature)."""
    assert torch_compat._autocast_takes_device() is (
        torch_compat.torch_version() >= (2, 4))

    def no_device():  # torch < 2.4: is_autocast_enabled()
        return False

    monkeypatch.setattr(torch, 'is_autocast_enabled', no_device)
    assert torch_compat._autocast_takes_device() is False


def test_is_compiling_without_dynamo_flag(monkeypatch):
    """Without ``torch.compiler.is_compiling`` and without dynamo's flag,
    nothing is reported as compiling."""
    import sys
    import types
    monkeypatch.delattr(torch.compiler, 'is_compiling', raising=False)
    monkeypatch.setitem(sys.modules, 'torch._dynamo',
                        types.ModuleType('torch._dynamo'))
    function = torch_compat._is_compiling_function()
    assert function() is False


def test_is_exporting_before_torch_2_5(monkeypatch):
    """Where ``torch.compiler`` has no ``is_exporting`` (torch < 2.5), or
    torch no ``compiler``, nothing is reported as exporting."""
    assert torch_compat.is_exporting() is False  # eager, on this torch
    monkeypatch.delattr(torch.compiler, 'is_exporting', raising=False)
    assert torch_compat.is_exporting() is False
    monkeypatch.delattr(torch, 'compiler')
    assert torch_compat.is_exporting() is False


def test_onnx_export_probe(monkeypatch):
    """The probe reads ``torch.onnx.export``'s signature: ``dynamo=``
    present or not, and an export whose signature cannot be read (a
    builtin) taken as without it."""
    import torch.onnx

    def with_dynamo(model, args, f=None, *, dynamo=False):
        pass

    def without(model, args, f=None):
        pass

    monkeypatch.setattr(torch.onnx, 'export', with_dynamo)
    assert torch_compat._onnx_export_has_dynamo() is True
    monkeypatch.setattr(torch.onnx, 'export', without)
    assert torch_compat._onnx_export_has_dynamo() is False
    monkeypatch.setattr(torch.onnx, 'export', object())  # not callable
    assert torch_compat._onnx_export_has_dynamo() is False


def test_cpu_fused_adamw_probe(monkeypatch):
    """The probe asks AdamW for the fused kernel with a CPU parameter: an
    AdamW that refuses it (torch < 2.4: RuntimeError) gives False, one that
    takes it True."""
    asked = []

    class AdamW:

        def __init__(self, params, fused=None):
            asked.append(fused)
            if fused:
                raise RuntimeError('`fused=True` requires all the params '
                                   'to be floating point Tensors of '
                                   'supported devices')

    monkeypatch.setattr(torch.optim, 'AdamW', AdamW)
    assert torch_compat._cpu_fused_adamw() is False
    assert asked == [True]
    monkeypatch.setattr(torch.optim, 'AdamW', lambda params, fused=None: None)
    assert torch_compat._cpu_fused_adamw() is True
