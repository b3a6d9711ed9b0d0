# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The Markdown report of a run's results."""
from typing import Callable, Dict, Iterable, List, Optional, Sequence


def _fmt(v, spec: str = '.3g') -> str:
    if v is None:
        return '-'
    if isinstance(v, bool):
        return 'yes' if v else '**NO**'
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _status(row: Dict) -> Optional[str]:
    if 'error' in row:
        return f'error: {row["error"][:160]}'
    if 'skipped' in row:
        return ('skipped (deadline)'
                if str(row['skipped']).startswith('not started') else
                f'skipped: {row["skipped"]}')
    return None


def _table(header: Sequence[str], rows: Iterable[Dict],
           lead: Callable[[Dict], List[str]],
           figures: Callable[[Dict], List[str]]) -> List[str]:
    """A Markdown table: the ``header`` and its rule, then a line a row:
    the ``lead`` cells (what the row is), then the row's figures or, for a
    failed or skipped row, its status (:func:`_status`) and empty cells to
    the header's width."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for r in rows:
        cells, status = lead(r), _status(r)
        cells += ([status] + [''] *
                  (len(header) - len(cells) - 1) if status else figures(r))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def _md_equality(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``equality`` section: the equality rows and
    the GradScaler steps."""
    lines: List[str] = []
    if sec.get('criteria'):
        lines.append('Criteria: fp32 ' + sec['criteria']['fp32'] +
                     '; autocast ' + sec['criteria']['amp'] + '.')
    lines.append('')
    lines += _table(
        ('model', 'input', 'mode', 'dtype', 'out err fast', 'out err literal',
         'ratio', 'grad err fast', 'grad err literal', 'pass'),
        [r for r in rows if r.get('kind') == 'equality'],
        lambda r: [r['model'], r['input'], r['mode'], r['dtype']], lambda r: [
            _fmt(r.get('err_fast')),
            _fmt(r.get('err_literal')),
            _fmt(r.get('ratio'), '.2f'),
            _fmt(r.get('grad_err_fast')),
            _fmt(r.get('grad_err_literal')),
            _fmt(r.get('pass'))
        ])
    steps = [r for r in rows if r.get('kind') == 'amp_steps']
    if steps:
        n = len(steps[0].get('steps', [])) or '?'
        lines.append('')
        lines += _table(
            (f'fp16 + GradScaler, {n} steps', 'input', 'loss scale',
             'skipped steps', 'non-finite grads', 'pass'), steps,
            lambda r: [f'{r["model"]} {r["path"]}', r['input']], lambda r: [
                _fmt(r.get('scale')),
                _fmt(r.get('skipped_steps')),
                _fmt(r.get('nonfinite_grads')),
                _fmt(r.get('pass'))
            ])
    return lines


def _md_throughput(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``throughput`` section: backbone speed and
    memory."""
    lines: List[str] = []
    st = sec.get('settings', {})
    small, large = st.get('small', '?'), st.get('large', '?')
    amp = st.get('amp', 'float16')
    amp = 'fp16' if amp == 'float16' else amp
    lines += [
        f'cudnn.benchmark {st.get("cudnn_benchmark")}. Eval, no autograd, '
        f'median of {st.get("repeats")} CUDA-event timings after '
        f'{st.get("warmup")} warm-ups; train step at '
        f'{st.get("train", large)} (train mode, forward + backward): '
        f'median of {st.get("train_repeats", 1)} timed steps after '
        f'{st.get("train_warmup", 0)} warm-ups, each between two '
        'synchronisations, and the peak memory above what was allocated '
        'before the steps.', ''
    ]

    def figures(r):

        def cell(key, spec):
            err = r.get('_'.join(key.split('_')[:2]) + '_error')
            if key in r:
                return _fmt(r[key], spec)
            return f'error: {err[:80]}' if err else '-'

        return [
            _fmt(r.get('params_M'), '.1f'),
            cell('small_fp32_img_s', '.0f'),
            cell('small_fp16_img_s', '.0f'),
            cell('large_fp32_ms', '.1f'),
            cell('large_fp16_ms', '.1f'),
            cell('train_fp32_step_ms', '.1f'),
            cell('train_amp_step_ms', '.1f'),
            cell('train_fp32_step_peak_MiB', '.0f'),
            cell('train_amp_step_peak_MiB', '.0f')
        ]

    return lines + _table(
        ('backbone', 'params (M)', f'{small} fp32 img/s',
         f'{small} {amp} img/s', f'{large} fp32 ms', f'{large} {amp} ms',
         'train step fp32 ms', f'train step {amp} ms', 'train step fp32 MiB',
         f'train step {amp} MiB'), rows, lambda r: [r['model']], figures)


def _md_maskrcnn(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``maskrcnn`` section: the Mask R-CNN
    training iteration."""
    lines: List[str] = []
    st = sec.get('settings', {})
    lines += [
        f'One training iteration at {st.get("image")}, batch '
        f'{st.get("batch")}: {st.get("amp")}; median of '
        f'{st.get("timed_iters")} timed iterations after '
        f'{st.get("warmup")} warm-ups.', ''
    ]
    return lines + _table(
        ('model', 'params (M)', 'iteration ms', 'peak MiB', 'skipped steps',
         'last loss'), rows, lambda r: [r['model']], lambda r: [
             _fmt(r.get('params_M'), '.1f'),
             _fmt(r.get('iter_ms'), '.0f'),
             _fmt(r.get('peak_MiB'), '.0f'),
             _fmt(r.get('skipped_steps')),
             _fmt(r.get('loss_last'), '.3f')
         ])


def _md_syncbn(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``syncbn`` section: SyncBatchNorm against
    BatchNorm."""
    return [''] + _table(
        ('model', 'norms', 'grads finite', 'train err vs BN',
         'eval err vs BN'), rows, lambda r: [r['model']], lambda r: [
             ', '.join(r.get('norms', [])),
             str(r.get('grads_finite')),
             _fmt(r.get('train_err_vs_bn')),
             _fmt(r.get('eval_err_vs_bn'))
         ])


def _md_compile(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``compile`` section: torch.compile against
    eager."""
    backend = str(sec.get('settings', {}).get('backend'))
    lines = [''] + _table(('model', 'backend', 'compile s', 'eager ms',
                           'compiled ms', 'speed-up', 'err vs eager'), rows,
                          lambda r: [r['model'], backend], lambda r: [
                              _fmt(r.get('compile_s'), '.0f'),
                              _fmt(r.get('eager_ms'), '.1f'),
                              _fmt(r.get('compiled_ms'), '.1f'),
                              _fmt(r.get('speedup'), '.2f'),
                              _fmt(r.get('err_vs_eager'))
                          ])
    for r in rows:
        lines += _md_multi_scale(r['model'], r.get('multi_scale_training'))
    return lines


def _md_multi_scale(model: str, ms) -> List[str]:
    """The multi-scale training steps of a ``compile`` row: one line per
    input size."""
    if not ms:
        return []
    if 'error' in ms:
        return ['', f'{model}, multi-scale training: {ms["error"]}']
    graphs = ms['graphs']
    lines = [
        '', f'{model}, training steps at several sizes in turn (automatic '
        f'dynamic shapes): {len(graphs)} graphs '
        f'({sum(graphs)} symbolic), first pass {ms["first_pass_s"]:.0f} s '
        f'(compilations included), {ms["graphs_while_timed"]} graphs '
        'compiled while timed', '',
        '| size | eager ms | compiled ms | speed-up | grad err vs eager |',
        '|' + '---|' * 5
    ]
    for size, eager, comp, err in zip(ms['sizes'], ms['eager_ms'],
                                      ms['compiled_ms'], ms['grad_err']):
        lines.append(f'| {"x".join(map(str, size))} | {eager:.1f} | '
                     f'{comp:.1f} | {eager / comp:.2f} | {_fmt(err)} |')
    return lines


def _variant_figures(r: Dict, amps) -> List[str]:
    """The figures of one row of the ``variants`` table."""
    cells = [_fmt(r.get('err_fp32')), _fmt(r.get('grad_err_fp32'))]
    cells += [_fmt(r.get(f'err_{a}')) for a in amps if a != 'float32']
    cells.append(_fmt(r.get('pass')))
    cells += [
        _fmt(r.get(f'train_{a}_step_ms'), '.1f') if f'train_{a}_step_ms' in r
        else 'error: ' + r.get(f'train_{a}_error', '-')[:80] for a in amps
    ]
    cells += [_fmt(r.get(f'train_{a}_step_peak_MiB'), '.0f') for a in amps]
    cells += [
        _fmt(r.get('small_fp32_img_s'), '.0f'),
        _fmt(r.get('small_fp16_img_s'), '.0f'),
        _fmt(r.get('large_fp32_ms'), '.1f'),
        _fmt(r.get('large_fp16_ms'), '.1f')
    ]
    return cells


def _md_variants(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``variants`` section: EMSA's cores against the
    literal path, ResT v2-Tiny and Swin-T."""
    st = sec.get('settings', {})
    amps = st.get('train_amp', ['float16', 'bfloat16'])
    lines = [
        f'cudnn.benchmark {st.get("cudnn_benchmark")}; training step at '
        f'{st.get("train")} (train mode, forward + backward): median of '
        f'{st.get("train_repeats")} after {st.get("train_warmup")} '
        f'warm-ups, each between two synchronisations; inference: median '
        f'of {st.get("repeats")} after {st.get("warmup")}; errors on '
        f'{st.get("eq_input")}, eval mode with autograd: fp32 against the '
        'literal path in float64, autocast against the same model in '
        f'float32; pass: fp32 {st.get("criteria", {}).get("fp32")}, '
        f'autocast {st.get("criteria", {}).get("amp")} (err_literal: the '
        'rest_small_literal row).', ''
    ]
    header = (
        ['model', 'EMSA core', 'fp32 err', 'fp32 grad err'] +
        [f'{a} err' for a in amps if a != 'float32'] + ['pass'] +
        [f'train {a} ms' for a in amps] + [f'train {a} MiB' for a in amps] + [
            f'{st.get("small")} fp32 img/s', f'{st.get("small")} fp16 img/s',
            f'{st.get("large")} fp32 ms', f'{st.get("large")} fp16 ms'
        ])
    lines += _table(
        header, [r for r in rows if r.get('kind') == 'variant'],
        lambda r: [r['model'], str(r.get('core') or '-')],
        lambda r: _variant_figures(r, amps))
    for r in rows:
        if r.get('kind') == 'sdpa_backends':
            lines += [
                '', 'SDPA backends for the mixed-query attention '
                '(forward and backward; values of d or C channels): ' +
                (_status(r)
                 or ', '.join(f'{k}: {v}'
                              for k, v in r.get('backends', {}).items()))
            ]
    return lines


_SECTION_MARKDOWN = {
    'variants': _md_variants,
    'equality': _md_equality,
    'throughput': _md_throughput,
    'maskrcnn': _md_maskrcnn,
    'syncbn': _md_syncbn,
    'compile': _md_compile,
}


def to_markdown(results: Dict) -> str:
    """The tables of a result dict (``gpu_check.json``)."""
    meta = results.get('meta', {})
    dev = meta.get('device', {})
    lines = [
        f'## GPU check: {dev.get("name", "?")}',
        '',
        f'torch {dev.get("torch")}, CUDA {dev.get("cuda")}, cuDNN '
        f'{dev.get("cudnn")}, Python {dev.get("python")}; ' +
        ', '.join(f'{k} {v}' for k, v in meta.get('versions', {}).items()) +
        f'; started {meta.get("started")}, '
        f'{_fmt(meta.get("elapsed_s"), ".0f")} s' +
        (' (quick mode)' if meta.get('quick') else ''),
    ]
    shim = meta.get('ops_shim') or {}
    if shim:
        lines.append(
            ('mmcv ops shim: ' +
             ('used, ' +
              str(shim.get('backend')) if shim.get('used') else 'not used') +
             f' ({shim.get("reason", "")})')[:300])
    core = meta.get('emsa_core') or {}
    if core:
        inference = core.get('inference') or {}
        line = (f'EMSA cores of the sections but variants and compile: '
                f'{core.get("chosen")} with autograd, '
                f'{inference.get("chosen")} for inference (--emsa-core '
                f'{core.get("requested")}')
        if core.get('requested') == 'auto':
            for mode, choice, key in (('with autograd', core, 'step_ms'),
                                      ('inference', inference, 'ms')):
                line += (
                    f'; {mode}, {choice.get("by")} of the candidates: ' +
                    ', '.join(f'{k} {_fmt(v, ".1f")}'
                              for k, v in choice.get(key, {}).items()) +
                    '; excluded: ' +
                    (', '.join(f'{k} ({v})'
                               for k, v in choice.get('excluded', {}).items())
                     or 'none'))
                if choice.get('reason'):
                    line += f'; {choice["reason"]}'
        lines.append(line + ')')
    secs = results.get('sections', {})
    for name, sec in secs.items():
        lines += [
            '', f'### {name}: {sec.get("status")}' +
            (f' ({sec["error"]})' if sec.get('error') else '')
        ]
        if sec.get('note'):
            lines.append(f'{sec["note"]}')
        rows = sec.get('rows', [])
        if rows:  # (a skipped or failed section without rows: no table)
            lines += _SECTION_MARKDOWN.get(name, lambda sec, rows: [])(sec,
                                                                       rows)
    return '\n'.join(lines) + '\n'
