"""Command-line pieces shared by ``tools/train.py`` and ``tools/test.py``."""
import os

from mmengine.config import DictAction

from .config import default_work_dir

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def add_runner_args(parser, cfg_options_example: str):
    """``--work-dir``, ``--cfg-options``, ``--launcher`` and the
    ``--local-rank`` that ``torch.distributed.launch`` passes."""
    parser.add_argument('--work-dir', help='the dir to save logs, models '
                        'and results (default: work_dirs/<config path under '
                        'configs/, without .py>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. '
                        f'{cfg_options_example}')
    parser.add_argument('--launcher', default='none', choices=LAUNCHERS,
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_runner_args(parser, argv=None):
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def apply_runner_args(cfg, args):
    """Launcher, default scope and work_dir (the command line, the config's
    own ``work_dir``, or :func:`~dsvlm.engine.config.default_work_dir`)."""
    cfg.launcher = args.launcher
    cfg.setdefault('default_scope', 'dsvlm')
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(args.config)
    return cfg
