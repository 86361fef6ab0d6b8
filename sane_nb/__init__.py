__version__ = "0.0.1"

from .bench import _old_names   # the benchmarks' old module names (sane_nb.bench_<stage>), for one release
