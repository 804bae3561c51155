"""Shared by the benchmark scripts."""
from __future__ import annotations

import os
import platform

import jax


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return (f'{os.cpu_count()} cores, {cpu}; jax {jax.__version__} on '
          f'{jax.devices()[0].platform} ({jax.device_count()} device(s))')


def runtime_env() -> dict[str, str]:
  """The environment settings that change step times: the allocator
  (``GLIBC_TUNABLES``, ``LD_PRELOAD``) and XLA's flags."""
  return {k: os.environ.get(k, '') for k in
          ('GLIBC_TUNABLES', 'LD_PRELOAD', 'XLA_FLAGS')}
