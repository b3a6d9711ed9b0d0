# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Running the sections: the deadline, the rows, the saved results."""
import datetime
import json
import os
import os.path as osp
import time
import traceback
from typing import Callable, Dict, Optional

import torch

from .measure import _short_error
from .report import to_markdown
from .settings import Settings


class DeadlinePassed(RuntimeError):
    """The run's time is up: the step was not started."""


class CheckRunner:
    """Runs the sections and records their results.

    Args:
        device (str): ``'cuda'`` or ``'cpu'``.
        out_dir (str): Where ``gpu_check.json`` and ``gpu_check.md`` go.
        settings (Settings): Sizes and counts.
        deadline_s (float): No new step starts after this many seconds.
        compile_budget_s (float): Time limit of the compile child process.
        log (callable): Progress printer.
    """

    def __init__(self,
                 device: str,
                 out_dir: str,
                 settings: Settings,
                 deadline_s: float = 420.0,
                 compile_budget_s: float = 150.0,
                 log: Optional[Callable[[str], None]] = None):
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise RuntimeError('--device cuda, but torch sees no CUDA device')
        self.out_dir = out_dir
        self.s = settings
        self.deadline_s = deadline_s
        self.compile_budget_s = compile_budget_s
        self.t0 = time.monotonic()
        self._log = log or self._print
        self.results: Dict = dict(meta={}, sections={})
        os.makedirs(out_dir, exist_ok=True)

    # -- bookkeeping -------------------------------------------------------
    def _print(self, msg: str):
        now = datetime.datetime.now(datetime.timezone.utc).strftime('%H:%M:%S')
        print(f'[gpu_check {now} +{self.elapsed():6.1f}s] {msg}', flush=True)

    def log(self, msg: str):
        self._log(msg)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.deadline_s - self.elapsed()

    def check_deadline(self, what: str, need_s: float = 0.0):
        if self.remaining() < need_s:
            raise DeadlinePassed(
                f'not started: {what} (deadline {self.deadline_s:.0f} s, '
                f'{self.elapsed():.0f} s elapsed)')

    @property
    def json_path(self) -> str:
        return osp.join(self.out_dir, 'gpu_check.json')

    @property
    def md_path(self) -> str:
        return osp.join(self.out_dir, 'gpu_check.md')

    def save(self):
        self.results['meta']['elapsed_s'] = self.elapsed()
        for path, text in ((self.json_path,
                            json.dumps(self.results, indent=1, default=str)),
                           (self.md_path, to_markdown(self.results))):
            tmp = path + '.tmp'
            with open(tmp, 'w') as f:
                f.write(text)
            os.replace(tmp, path)

    def _row(self, sec: Dict, row: Dict) -> Dict:
        sec['rows'].append(row)
        self.save()
        return row

    def _guarded_row(self,
                     sec: Dict,
                     base: Dict,
                     fn: Callable[[], Dict],
                     need_s: float = 0.0):
        """Run ``fn`` for one row; its error or a passed deadline is
        recorded in the row and the section goes on."""
        row = dict(base)
        t = time.monotonic()
        try:
            self.check_deadline(' '.join(str(v) for v in base.values()),
                                need_s)
            row.update(fn())
        except DeadlinePassed as e:
            row['skipped'] = str(e)
        except Exception as e:  # noqa: BLE001 (recorded, the run goes on)
            row['error'] = _short_error(e)
            row['traceback'] = traceback.format_exc(limit=8)
            self.log(f'  error: {row["error"]}')
            self._free()
        row['seconds'] = time.monotonic() - t
        return self._row(sec, row)

    def _free(self):
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    def skip_section(self, name: str, why: str):
        """Record section ``name`` as not run, saying ``why``."""
        self.results['sections'][name] = dict(
            status='skipped', error=why, rows=[])

    def run_section(self, name: str, fn: Callable[[Dict], None]):
        sec = self.results['sections'].setdefault(
            name, dict(status='running', rows=[]))
        sec['status'] = 'running'
        self.save()
        t = time.monotonic()
        self.log(f'section {name}: start ({self.remaining():.0f} s left)')
        try:
            self.check_deadline(f'section {name}')
            fn(sec)
            bad = [r for r in sec['rows'] if 'error' in r]
            skipped = [
                r for r in sec['rows']
                if str(r.get('skipped', '')).startswith('not started')
            ]
            sec['status'] = ('errors in some rows' if bad else
                             'partly skipped (deadline)' if skipped else 'ok')
        except DeadlinePassed as e:
            sec['status'] = 'skipped'
            sec['error'] = str(e)
        except Exception as e:  # noqa: BLE001 (recorded, the run goes on)
            sec['status'] = 'error'
            sec['error'] = _short_error(e)
            sec['traceback'] = traceback.format_exc(limit=12)
            self.log(f'section {name}: error: {sec["error"]}')
            self._free()
        sec['seconds'] = sec.get('seconds', 0.0) + time.monotonic() - t
        self.log(f'section {name}: {sec["status"]} '
                 f'({time.monotonic() - t:.1f} s)')
        self.save()
