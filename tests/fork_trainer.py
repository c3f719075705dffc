"""Start many ``tools/train.py`` runs quickly: each is a fork of one server
process that imported torch, transformers, MMEngine and dsvlm once (10 s
on a loaded CPU), so a run that a test kills and resumes again and again
starts in about a second.  A forked run is a process of its own: SIGKILL
ends it as it would end ``python tools/train.py``.

    with ForkTrainer() as trainer:
        pid = trainer.start(argv, log_path, env)   # tools/train.py argv
        os.kill(pid, signal.SIGKILL)               # or let it run
        code = trainer.wait(timeout=60)            # -9 when killed

Run as a script, this module is the server: it reads one JSON request a
line from stdin, forks, answers ``started PID``, then ``exited PID CODE``.
"""
import json
import os
import os.path as osp
import select
import signal
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, 'tests')


class ForkTrainer:

    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
        env['PYTHONPATH'] = os.pathsep.join(
            [REPO, TESTS] + [p for p in [env.get('PYTHONPATH')] if p])
        self.server = subprocess.Popen(
            [sys.executable, __file__], cwd=REPO, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True)
        self.pid = None
        self._expect('ready', timeout=180)

    def start(self, argv, log, env=None) -> int:
        assert self.pid is None, 'one run at a time'
        open(log, 'w').close()  # there when start() returns
        self.server.stdin.write(json.dumps(dict(
            argv=[str(a) for a in argv], log=str(log),
            env={k: str(v) for k, v in (env or {}).items()})) + '\n')
        self.server.stdin.flush()
        self.pid = int(self._expect('started')[1])
        return self.pid

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:  # it had ended
            pass

    def wait(self, timeout=120) -> int:
        """The run's exit code (``-9`` when killed)."""
        try:
            words = self._expect('exited', timeout)
        except TimeoutError:
            self.kill()
            raise
        self.pid = None
        return int(words[2])

    def _expect(self, word, timeout=30):
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0 or not select.select([self.server.stdout], [], [],
                                              left)[0]:
                raise TimeoutError(f'no {word!r} from the fork server in '
                                   f'{timeout} s')
            line = self.server.stdout.readline()
            if not line:
                raise RuntimeError('the fork server died')
            words = line.split()
            if words and words[0] == word:
                return words

    def close(self):
        if self.pid is not None:
            self.kill()
        self.server.stdin.close()
        self.server.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve():
    sys.path[:0] = [REPO, TESTS]
    from tool_loader import load_tool
    train = load_tool('train')
    import checkpoint_faults  # noqa: F401  (wraps the save steps)
    import run_faults  # noqa: F401  (data, full-disk and nan faults)
    import transformers.models.clip.modeling_clip  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import dsvlm.datasets  # noqa: F401
    import dsvlm.models  # noqa: F401
    out = sys.stdout
    print('ready', file=out, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(train, request)
        print(f'started {pid}', file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        print(f'exited {pid} {os.waitstatus_to_exitcode(status)}', file=out,
              flush=True)


def _child(train, request):
    code = 1
    try:
        fd = os.open(request['log'], os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.update(request['env'])
        train.main(request['argv'])
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:  # noqa: BLE001
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == '__main__':
    _serve()
