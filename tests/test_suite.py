"""Suites end to end on the tiny Llama: a two-task suite this test writes (a multiple-choice task in a user
task folder picked up through eval.include_path, and word perplexity of a local text file), each task's
recovery, the mean and the worst checked against an independent computation from the logged per-item
scores; the floor on each floor_on mode; the leaderboard, the plot and the summary; fingerprints of a user
folder's content; a generative task through both lm-eval paths; the OpenLLM preset refused offline."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from conftest import ROOT, WORDS, base_overrides, compose, sentence

from quantsweep import floor, pipeline, point, tracking, validate
from quantsweep.errors import ConfigError
from quantsweep.evaluation import checks
from quantsweep.evaluation.harness import evaluate
from quantsweep.recovery import Scored, task_recovery
from quantsweep.results import collect, plots, rank, render
from quantsweep.sweeps import summary

ITEMS = 12


def write_user_tasks(folder: Path, seed: int = 0) -> Path:
    """A team's private benchmark: a multiple-choice task and a generative (exact match) one, each reading
    a JSONL file that sits in the folder."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "mc.jsonl").open("w") as out:
        for _ in range(ITEMS):
            doc = {
                "q": sentence(rng, 8),
                "choices": [sentence(rng, 3) for _ in range(3)],
                "label": rng.randrange(3),
            }
            out.write(json.dumps(doc) + "\n")
    with (folder / "gen.jsonl").open("w") as out:
        for _ in range(ITEMS):
            # Letters and spaces are ignored when matching (below): a random model gets "dog" right and
            # "cat!" wrong, so its score is neither 0 nor 1 whatever it generates.
            out.write(json.dumps({"q": sentence(rng, 6), "answer": rng.choice(["dog", "cat!"])}) + "\n")
    (folder / "my_mc.yaml").write_text(
        "task: my_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {folder / 'mc.jsonl'}\n"
        "output_type: multiple_choice\nvalidation_split: validation\ndoc_to_text: q\ndoc_to_target: label\n"
        "doc_to_choice: choices\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        "metadata:\n  version: 1.0\n"
    )
    (folder / "my_gen.yaml").write_text(
        "task: my_gen\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{q}} is a'\ndoc_to_target: answer\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 4\n  do_sample: false\n"
        "filter_list:\n  - name: strict\n    filter:\n      - function: regex\n"
        "        regex_pattern: '([a-z]+)'\n      - function: take_first\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "    regexes_to_ignore: ['[a-z ]']\n"
        "metadata:\n  version: 1.0\n"
    )
    return folder


def write_corpus(path: Path, paragraphs: int = ITEMS + 2, seed: int = 1) -> Path:
    rng = random.Random(seed)
    text = "\n\n".join("\n".join(sentence(rng, 14) for _ in range(2)) for _ in range(paragraphs))
    path.write_text(text + "\n")
    return path


@pytest.fixture(scope="module")
def suite_files(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    work = tmp_path_factory.mktemp("suite")
    return SimpleNamespace(
        work=work, tasks=write_user_tasks(work / "team_tasks"), corpus=write_corpus(work / "corpus.txt")
    )


def suite_overrides(files: SimpleNamespace) -> list[str]:
    return [
        "eval.tasks=[my_mc,text_file]",
        f"eval.include_path={files.tasks}",
        f"+eval.data_paths.text_file={files.corpus}",
        f"eval.limit={ITEMS}",
    ]


@pytest.fixture(scope="module")
def ran(tiny_model, task_file, calib_file, suite_files) -> SimpleNamespace:
    """The W4A16 g64 point of the suite judged on its worst task, and its baseline."""
    cfg = compose(
        [
            *base_overrides(tiny_model, task_file, calib_file, suite_files.work),
            *suite_overrides(suite_files),
            "scheme=W4A16",
            "scheme.group_size=64",
            "eval.floor_on=worst",
        ]
    )
    outcome = pipeline.run(cfg)
    assert outcome.status == "FINISHED", outcome.error
    run = mlflow.get_run(outcome.run_id)
    base = run.data.tags[tracking.BASELINE_RUN]
    return SimpleNamespace(
        cfg=cfg,
        outcome=outcome,
        run=run,
        items=tracking.load_items(outcome.run_id),
        base_items=tracking.load_items(base),
        base_run=mlflow.get_run(base),
    )


def expected(ran: SimpleNamespace) -> dict[str, tuple[float, float]]:
    """{task: (recovery, stderr)} computed here from the logged per-item scores, by the formulas."""
    q, b = ran.items["my_mc"]["acc_norm"], ran.base_items["my_mc"]["acc_norm"]
    assert sorted(q) == sorted(b) == list(range(ITEMS))
    rows = [(q[d], b[d], 1.0) for d in q] + [(1, 1, 0.5), (1, 0, 0.5), (0, 1, 0.5), (0, 0, 0.5)]
    n = sum(w for *_, w in rows)
    qm, bm = sum(w * x for x, _, w in rows) / n, sum(w * y for _, y, w in rows) / n
    se_mc = math.sqrt(sum(w * (x - qm / bm * y) ** 2 for x, y, w in rows) / (n * (n - 1))) / bm
    ll_q, ll_b = (
        ran.items["text_file"]["word_perplexity.ll"],
        ran.base_items["text_file"]["word_perplexity.ll"],
    )
    words = ran.items["text_file"]["word_perplexity.weight"]
    assert words == ran.base_items["text_file"]["word_perplexity.weight"] and len(words) == ITEMS
    d = {k: ll_q[k] - ll_b[k] for k in words}
    slope = sum(d.values()) / sum(words.values())
    se_log = math.sqrt(sum((d[k] - slope * words[k]) ** 2 for k in d) / (ITEMS * (ITEMS - 1)))
    se_log /= sum(words.values()) / ITEMS
    return {
        "my_mc": (sum(q.values()) / sum(b.values()), se_mc),
        "text_file": (math.exp(slope), math.exp(slope) * se_log),
    }


@pytest.mark.slow
def test_each_task_the_mean_and_the_worst_match_the_logged_items(ran):
    m, tags = ran.run.data.metrics, ran.run.data.tags
    found = expected(ran)
    for task, (value, se) in found.items():
        assert m[f"recovery.{task}"] == pytest.approx(value) and m[
            f"recovery_stderr.{task}"
        ] == pytest.approx(se)
    # the perplexity and its per-document stderr, from the same items
    ll, words = ran.items["text_file"]["word_perplexity.ll"], ran.items["text_file"]["word_perplexity.weight"]
    assert m["text_file.word_perplexity"] == pytest.approx(math.exp(-sum(ll.values()) / sum(words.values())))
    assert (
        m["text_file.word_perplexity_stderr"] > 0 and m["score.text_file"] == m["text_file.word_perplexity"]
    )
    (r_mc, se_mc), (r_ppl, se_ppl) = found["my_mc"], found["text_file"]
    assert m["recovery_mean"] == pytest.approx((r_mc + r_ppl) / 2)
    assert m["recovery_mean_stderr"] == pytest.approx(math.hypot(se_mc, se_ppl) / 2)
    worst = min(found, key=lambda t: found[t][0])
    assert tags["quantsweep.worst_task"] == worst and m["recovery_worst"] == pytest.approx(found[worst][0])
    # the primary task (the first) is `recovery`, as before suites; the floor is on the worst task
    assert m["recovery"] == m["recovery.my_mc"] and m["accuracy"] == m["my_mc.acc_norm"]
    assert m["passed"] == float(found[worst][0] >= 0.97)
    assert json.loads(tags["quantsweep.task_metrics"]) == {
        "my_mc": "acc_norm",
        "text_file": "word_perplexity",
    }
    assert json.loads(ran.base_run.data.tags["quantsweep.task_metrics"]) == {
        "my_mc": "acc_norm",
        "text_file": "word_perplexity",
    }


@pytest.mark.slow
@pytest.mark.parametrize("floor_on", ["recovery", "mean", "worst", "task:text_file", "accuracy"])
def test_the_floor_on_each_mode_in_the_run_and_the_leaderboard(ran, floor_on):
    m, found = ran.run.data.metrics, expected(ran)
    value = {
        "recovery": found["my_mc"][0],
        "mean": (found["my_mc"][0] + found["text_file"][0]) / 2,
        "worst": min(v for v, _ in found.values()),
        "task:text_file": found["text_file"][0],
        "accuracy": m["my_mc.acc_norm"],
    }[floor_on]
    judged = floor.judge(m, floor_on, 0.0)
    assert judged is not None and judged.value == pytest.approx(value)
    z = floor.z_value(0.9)
    lower = floor.judge(m, floor_on, z).lower
    if floor_on == "worst":  # every task's lower bound counts
        assert lower == pytest.approx(min(v - z * se for v, se in found.values()))
    board = collect(ran.cfg.tracking.uri, "quantsweep")
    row = board["run_id"] == ran.run.info.run_id
    board.loc[row, "floor_on"] = floor_on
    for cut, passes in ((value - 1e-6, True), (value + 1e-6, False)):
        if 0 <= cut <= 1:
            assert bool(rank.with_floor(board, cut).loc[row, "passed"].iloc[0]) is passes


@pytest.mark.slow
def test_leaderboard_plot_and_summary_show_every_task(ran, tmp_path):
    board = collect(ran.cfg.tracking.uri, "quantsweep")
    row = board.set_index("run_id").loc[ran.run.info.run_id]
    m = ran.run.data.metrics
    assert (
        row["suite"] == "my_mc, text_file" and row["worst_task"] == ran.run.data.tags["quantsweep.worst_task"]
    )
    assert row["recovery_pct:text_file"] == pytest.approx(100 * m["recovery.text_file"])
    assert row["recovery_mean_pct"] == pytest.approx(100 * m["recovery_mean"])
    assert row["score:my_mc"] == m["my_mc.acc_norm"]
    md = render.to_markdown(board)
    header = md.splitlines()[0]
    assert (
        "mean rec." in header and "worst rec." in header and "| my_mc |" in header and "text_file" in header
    )
    titles = [ax.get_title() for ax in plots.figure(board).axes if ax.get_visible()]
    assert titles == ["custom", "custom: suite recovery"]
    table = summary.table([ran.outcome])
    assert "mean rec." in table and "recovery by task:" in table
    by_task = table.split("recovery by task:")[1].strip().splitlines()
    assert by_task[0].split() == ["my_mc", "text_file"] and by_task[2].split()[0] == "baseline"
    rows = [line for line in table.splitlines() if not line.startswith("custom baseline:")]
    assert all(len(line) < 120 for line in rows)  # how the baseline was evaluated: its paths, on a line


def test_a_user_task_folder_is_fingerprinted_by_its_content(tiny_model, task_file, calib_file, tmp_path):
    folder = write_user_tasks(tmp_path / "team")
    corpus = write_corpus(tmp_path / "corpus.txt")
    files = SimpleNamespace(tasks=folder, corpus=corpus)

    def fingerprint() -> str:
        return point.baseline_fingerprint(
            compose([*base_overrides(tiny_model, task_file, calib_file, tmp_path), *suite_overrides(files)])
        )

    cfg = compose([*base_overrides(tiny_model, task_file, calib_file, tmp_path), *suite_overrides(files)])
    validate.check_eval(cfg.eval)  # the user's task is known through eval.include_path
    assert point.data_source(cfg.eval).startswith(f"include:{folder} sha256:")
    first = fingerprint()
    assert fingerprint() == first
    yaml_file = folder / "my_mc.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("doc_to_text: q", "doc_to_text: '{{q}}?'"))
    prompt = fingerprint()
    assert prompt != first
    with (folder / "mc.jsonl").open("a") as out:  # the data the task reads, too
        out.write(json.dumps({"q": "the dog", "choices": ["a", "b", "c"], "label": 0}) + "\n")
    assert fingerprint() not in (first, prompt)
    corpus.write_text(corpus.read_text() + "\nthe cat runs\n")
    assert len({first, prompt, fingerprint()}) == 3


def test_user_tasks_are_checked_before_any_work(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="unknown to lm-eval.*eval.include_path"):
        validate.check_eval(make_cfg("eval.tasks=[my_mc]").eval)
    with pytest.raises(ConfigError, match="is not a folder"):
        validate.check_eval(make_cfg(f"eval.include_path={tmp_path / 'nowhere'}").eval)
    with pytest.raises(ConfigError, match=r"eval.metrics names \['gsm8k'\]"):
        validate.check_eval(make_cfg("+eval.metrics.gsm8k=acc").eval)
    with pytest.raises(ConfigError, match="eval.floor_on=accuracy with word_perplexity"):
        validate.check_eval(
            make_cfg(
                "eval=text_file",
                f"eval.data_path={write_corpus(tmp_path / 'c.txt')}",
                "eval.floor_on=accuracy",
            ).eval
        )


@pytest.mark.slow
def test_a_generative_task_pairs_its_items_through_both_lm_eval_paths(tiny_model, tmp_path):
    """exact match under a regex filter, with per-task shots through the settings group (eval.task_overrides),
    in this process and through lm-eval's CLI in another interpreter (the vLLM backend's path)."""
    folder = write_user_tasks(tmp_path / "team")
    cfg = compose(
        [
            "model=custom",
            f"model.source={tiny_model}",
            "eval.tasks=[my_gen,my_mc]",
            f"eval.include_path={folder}",
            "+eval.task_overrides={my_gen: {num_fewshot: 2}}",
            "eval.num_fewshot=1",
            "+eval.metrics.my_gen=exact_match_strict",
            f"eval.limit={ITEMS}",
            "eval.dtype=float32",
            "eval.device=cpu",
        ]
    ).eval
    validate.check_eval(cfg)
    here = evaluate(str(tiny_model), cfg, tmp_path / "cache", 0, compressed=False)
    cfg.python = sys.executable
    there = evaluate(str(tiny_model), cfg, tmp_path / "cache", 0, compressed=False)
    for result in (here, there):
        assert result.raw["n-shot"]["my_gen"] == 2 and result.raw["n-shot"]["my_mc"] == 1
        items = result.items["my_gen"]["exact_match_strict"]
        assert sorted(items) == list(range(ITEMS))
        assert sum(items.values()) / ITEMS == pytest.approx(result.metrics["my_gen"]["exact_match_strict"])
        assert [s.metric for s in result.suite] == ["exact_match_strict", "acc_norm"]
    assert here.items == there.items
    # the same model against itself: recovery 1, and an interval that is not a point
    gen = here.suite[0]
    q = Scored(gen.value, gen.stderr, True, here.items["my_gen"]["exact_match_strict"])
    same = task_recovery(
        q, Scored(gen.value, gen.stderr, True, dict(there.items["my_gen"]["exact_match_strict"]))
    )
    assert same.value == pytest.approx(1.0) and same.method == "paired" and same.stderr > 0


def test_openllm_preset_is_refused_offline_in_one_line(monkeypatch):
    from huggingface_hub import constants

    cfg = compose(["eval=openllm_v1"]).eval
    assert list(cfg.tasks) == ["arc_challenge", "gsm8k", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande"]
    assert (
        cfg.task_overrides["arc_challenge"]["num_fewshot"] == 25
        and cfg.metrics["gsm8k"] == "exact_match_strict-match"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    checks._hub_reachable.cache_clear()
    try:
        with pytest.raises(ConfigError) as refused:
            validate.check_eval(cfg)
    finally:
        checks._hub_reachable.cache_clear()
    message = str(refused.value)
    assert "\n" not in message and "Hugging Face hub" in message and "allenai/ai2_arc" in message
    assert "eval=text_file" in message and "eval.include_path" in message


def test_text_file_documents_are_its_paragraphs(tmp_path):
    from quantsweep.evaluation import text_file

    paragraphs = tmp_path / "p.txt"
    paragraphs.write_text("one two\nthree\n\n  \nfour five\n\n\nsix\n")
    assert text_file.documents(paragraphs) == ["one two\nthree", "four five", "six"]
    lines = tmp_path / "l.txt"
    lines.write_text(" ".join(WORDS[:3]) + "\n" + " ".join(WORDS[3:6]) + "\n")
    assert text_file.documents(lines) == [" ".join(WORDS[:3]), " ".join(WORDS[3:6])]
    with pytest.raises(ConfigError, match="does not exist"):
        text_file.check(tmp_path / "missing.txt")


@pytest.mark.slow
def test_a_search_constrained_on_the_worst_task(tiny_model, task_file, calib_file, suite_files, tmp_path):
    """The search's feasibility is the suite's: each trial's lower bound is the lowest of its tasks'
    recovery − z·stderr, from the metrics its run logged."""
    import optuna

    from quantsweep.sweeps.search import decisions

    overrides = [
        *base_overrides(tiny_model, task_file, calib_file, tmp_path),
        *suite_overrides(suite_files),
        "sweep=search_smallest",
        "scheme=W4A16,W8A16",
        "scheme.group_size=64",
        "ignore=lm_head",
        "scheme.algorithm=RTN",
        "layers=none",
        "search.sampler=grid",
        "search.n_trials=2",
        "search.low_fidelity_limit=null",
        "search.floor_on=worst",
        "search.floor=0.5",
        "search.confidence=0.9",
        f"search.storage=sqlite:///{tmp_path}/optuna.db",
        "search.study_name=suite",
    ]
    cmd = [sys.executable, "run.py", "-m", *overrides, f"hydra.sweep.dir={tmp_path}/multirun"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    study = optuna.load_study(study_name="suite", storage=f"sqlite:///{tmp_path}/optuna.db")
    z = floor.z_value(0.9)
    records = [t.user_attrs[decisions.RECORD] for t in study.trials if decisions.RECORD in t.user_attrs]
    assert len(records) == 2
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for record in records:
        m = mlflow.get_run(record["full_run_id"]).data.metrics
        tasks = {t: (m[f"recovery.{t}"], m[f"recovery_stderr.{t}"]) for t in ("my_mc", "text_file")}
        assert (
            record["value"]
            == pytest.approx(min(v for v, _ in tasks.values()))
            == pytest.approx(m["recovery_worst"])
        )
        assert record["lower"] == pytest.approx(min(v - z * se for v, se in tasks.values()))
        assert record["verdict"] == (decisions.FEASIBLE if record["lower"] >= 0.5 else decisions.INFEASIBLE)
