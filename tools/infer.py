"""Answer questions about images with a trained checkpoint.

    python tools/infer.py CONFIG CHECKPOINT --image PATH --question TEXT
    python tools/infer.py CONFIG CHECKPOINT --jsonl questions.jsonl \\
        --out answers.jsonl [--batch-size 8] [--image-folder DIR]
    common: [--max-new-tokens N] [--device cpu|cuda] [--cfg-options k=v ...]

CHECKPOINT is anything ``tools/export_hf.py`` reads (a ``.pth``, a
DeepSpeed or FSDP2 checkpoint directory, a work_dir).  Each question is
built into the sample that the config's test pipeline would build (see
:mod:`dsvlm.inference`) and answered greedily by ``LlavaModel.predict``.

One question (``--image`` may be left out for a text-only question): the
answer alone is printed on stdout, logs go to stderr.

A JSONL file: one object per line with ``question`` and optionally
``image`` (a path relative to ``--image-folder``, default the JSONL file's
folder; no ``image`` is a text-only question) and ``id`` (default: the line
number).  Every line is checked before the model is loaded; errors name
the file and the line.  ``--out`` gets each object with its ``id`` and the
``answer`` added, in input order; it is written next to itself and renamed
when complete, so it never holds half the answers.
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# stdout is the answer's: libraries that log there on import log to stderr
with contextlib.redirect_stdout(sys.stderr):
    import torch  # noqa: E402
    from mmengine.config import DictAction  # noqa: E402
    from mmengine.utils import ProgressBar  # noqa: E402
    from PIL import Image  # noqa: E402

    from dsvlm.datasets.errors import DataError, DataProblem  # noqa: E402
    from dsvlm.engine import load_config  # noqa: E402
    from dsvlm.engine.config import for_inference  # noqa: E402
    from dsvlm.export import build_for_export  # noqa: E402
    from dsvlm.export.export import image_aspect_ratio  # noqa: E402
    from dsvlm.inference import Inferencer  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Answer questions about images with a checkpoint')
    parser.add_argument('config', help='the config the model trained with')
    parser.add_argument('checkpoint', help='.pth, sharded checkpoint '
                        'directory or work_dir')
    one = parser.add_argument_group('one question')
    one.add_argument('--question', help='the question')
    one.add_argument('--image', help='the image (none: a text-only question)')
    many = parser.add_argument_group('a JSONL file of questions')
    many.add_argument('--jsonl', help='questions, one JSON object a line')
    many.add_argument('--out', help='the answers (JSONL) to write')
    many.add_argument('--image-folder', help='where the images are '
                      "(default: the JSONL file's folder)")
    many.add_argument('--batch-size', type=int, default=8,
                      help='questions per forward pass (default 8)')
    parser.add_argument('--max-new-tokens', type=int,
                        help="the answer's maximum length in tokens "
                        "(default: the config's generation_cfg)")
    parser.add_argument('--device', help='e.g. cpu, cuda (default: cuda if '
                        'available, else cpu)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    args = parser.parse_args(argv)
    if (args.question is None) == (args.jsonl is None):
        parser.error('give either --question (with --image) or --jsonl')
    if args.jsonl is not None and args.out is None:
        parser.error('--jsonl needs --out')
    if args.question is not None and (args.out or args.image_folder):
        parser.error('--out and --image-folder go with --jsonl')
    if args.jsonl is not None and args.image is not None:
        parser.error('--image goes with --question; a JSONL line names '
                     'its own image')
    if args.batch_size < 1:
        parser.error('--batch-size must be >= 1')
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error('--max-new-tokens must be >= 1')
    return args


def read_questions(jsonl, image_folder=None) -> list:
    """The questions of ``jsonl``: dicts of ``line``, ``record`` (the
    object, with ``id`` set) and ``image`` (its full path, or None).

    Raises :class:`DataError` naming the file and line of every bad line
    (invalid JSON, no ``question``, an ``image`` that is not a file)."""
    if not osp.isfile(jsonl):
        raise FileNotFoundError(f'question file not found: {jsonl}')
    if image_folder is None:
        image_folder = osp.dirname(osp.abspath(jsonl))
    questions, problems = [], []

    def problem(kind, message, line, record=None):
        sid = None
        if isinstance(record, dict) and record.get('id') is not None:
            sid = str(record['id'])
        problems.append(DataProblem(kind, jsonl, message, line=line,
                                    sample_id=sid))

    with open(jsonl, encoding='utf-8') as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                problem('bad_json', f'{e.msg} (column {e.colno})', line)
                continue
            if not isinstance(record, dict):
                problem('bad_record', 'a line must be a JSON object, got '
                        f'{type(record).__name__}', line)
                continue
            if 'question' not in record:
                problem('bad_record', "no 'question'; keys: "
                        f'{sorted(record)}', line, record)
                continue
            if not isinstance(record['question'], str):
                problem('bad_record', "'question' must be a string, got "
                        f"{type(record['question']).__name__}", line, record)
                continue
            image = record.get('image')
            if image is not None:
                if not isinstance(image, str):
                    problem('bad_record', "'image' must be one path, got "
                            f'{str(image)[:100]}', line, record)
                    continue
                image = osp.join(image_folder, image)
                if not osp.isfile(image):
                    problem('missing_image', f'image not found: {image}',
                            line, record)
                    continue
            elif '<image>' in record['question']:
                problem('bad_image_token', "<image> in a question without "
                        "'image'", line, record)
                continue
            record = dict(record)
            if record.get('id') is None:
                record['id'] = line
            questions.append(dict(line=line, record=record, image=image))
    if problems:
        raise DataError(problems)
    return questions


def open_image(path, jsonl=None, line=None, sample_id=None) -> Image.Image:
    """The RGB image at ``path``; a :class:`DataError` naming the file and
    line (of ``jsonl``, or the image itself) if it does not decode."""
    try:
        with Image.open(path) as image:
            return image.convert('RGB')
    except Exception as e:  # PIL raises many types for broken files
        kind = 'unreadable_image' if osp.isfile(path) else 'missing_image'
        raise DataError([DataProblem(
            kind, jsonl or path, f'cannot read image {path}: '
            f'{type(e).__name__}: {e}', line=line,
            sample_id=None if sample_id is None else str(sample_id))]) from e


def build_inferencer(args) -> Inferencer:
    cfg = for_inference(load_config(args.config, args.cfg_options,
                                    launcher='none'))
    model = build_for_export(cfg, args.checkpoint)
    if args.max_new_tokens is not None:
        model.generation_cfg['max_new_tokens'] = args.max_new_tokens
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    model.to(device)
    return Inferencer(model, model.image_processor_cfg,
                      model.template or cfg.get('template'),
                      image_aspect_ratio(cfg), batch_size=args.batch_size)


def answer_file(inferencer, questions, jsonl, out):
    """Answer ``questions`` (of :func:`read_questions`) batch by batch and
    write them to ``out`` through a temporary file renamed when complete."""
    out = osp.abspath(out)
    os.makedirs(osp.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(out)}.',
                               suffix='.tmp', dir=osp.dirname(out))
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            progress = ProgressBar(len(questions), file=sys.stderr)
            size = inferencer.batch_size
            for start in range(0, len(questions), size):
                batch = questions[start:start + size]
                pairs = [(None if q['image'] is None else
                          open_image(q['image'], jsonl, q['line'],
                                     q['record']['id']),
                          q['record']['question']) for q in batch]
                answers = inferencer.answer(
                    pairs, ids=[q['record']['id'] for q in batch])
                for q, answer in zip(batch, answers):
                    f.write(json.dumps(dict(q['record'], answer=answer),
                                       ensure_ascii=False) + '\n')
                progress.update(len(batch))
            sys.stderr.write('\n')
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return out


def main(argv=None):
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        if args.jsonl is not None:  # every line checked before the model
            questions = read_questions(args.jsonl, args.image_folder)
        else:
            image = None if args.image is None else open_image(args.image)
        inferencer = build_inferencer(args)
        if args.jsonl is not None:
            return answer_file(inferencer, questions, args.jsonl, args.out)
        answer = inferencer.answer([(image, args.question)])[0]
    print(answer)
    return answer


if __name__ == '__main__':
    try:
        main()
    except DataError as e:
        sys.exit(f'error: {e}')
