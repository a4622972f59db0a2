"""One run's report (`python -m tornado.report outputs/runs/<run>`): its scores on the test and validation
cases, what it was (settings, data, devices, times), its epochs, and its figures. tornado.report builds the
figures and calls `render` (the page) and `text` (the terminal's summary)."""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from tornado.collect import section
from tornado.errors import is_number
from tornado.records import best_epoch
from tornado.tables import number_text


def _num(v: Any, digits: int = 4) -> str:
    return number_text(v, digits) if is_number(v) else "–"  # number_text: a dash for NaN and inf too


def _triple(m: dict, prefix: str, suffix: str) -> str:
    values = [m.get(f"{prefix}{k}{suffix}") for k in ("csi", "pod", "far")]
    return "–" if all(v is None for v in values) else " · ".join(_num(v, 3) for v in values)


def score_rows(m: dict) -> list[tuple[str, str, str, str]]:
    """(score, test, validation, how to read it) for the page and the terminal."""
    clim = m.get("climatology")
    never = f"; never forecasting a tornado scores {_num(1 - clim, 3)}" if is_number(clim) else ""

    def auc(prefix: str) -> str:
        v, se = m.get(f"{prefix}roc_auc"), m.get(f"{prefix}roc_auc_se")
        return _num(v) + (f" ± {_num(se, 2)}" if is_number(se) and math.isfinite(se) else "")

    def cases(prefix: str) -> str:
        n, pos = m.get(f"{prefix}n"), m.get(f"{prefix}positives")
        if not is_number(n):
            return "–"
        return f"{int(n):,}" + (f" ({int(pos):,} tornadic)" if is_number(pos) else "")

    chosen = m.get("threshold")  # NaN without a validation split: no row for it
    picked = [(f"CSI · POD · FAR at {_num(chosen, 3)} (chosen on validation)", _triple(m, "", ""),
               _triple(m, "val_", "_best"), "yes/no at the threshold chosen on the validation split (its best there)")]
    return [
        ("accuracy", _num(m.get("accuracy")), _num(m.get("val_accuracy")),
         f"share right at probability 0.5, the paper's figure{never}"),
        ("ROC AUC", auc(""), auc("val_"), "how well tornadic storms rank above the others: 0.5 is chance, 1 perfect; "
                                         "± one standard error"),
        ("average precision", _num(m.get("average_precision")), _num(m.get("val_average_precision")),
         f"area under precision against recall; the base rate ({_num(clim, 3)}) is no skill"),
        *(picked if is_number(chosen) and math.isfinite(chosen) else []),
        ("CSI · POD · FAR at 0.5", _triple(m, "", "_050"), _triple(m, "val_", "_050"), "yes/no at probability 0.5"),
        (f"CSI · POD · FAR at {_num(m.get('best_threshold'), 3)} (test's best)", _triple(m, "", "_best"), "–",
         "at the test set's own best threshold: optimistic, for comparison only"),
        ("Brier score", _num(m.get("brier")), _num(m.get("val_brier")), "mean squared error of the probability"),
        ("Brier skill score", _num(m.get("bss")), _num(m.get("val_bss")),
         "against always forecasting the training base rate: 0 is no skill, 1 perfect"),
        ("reliability", _num(m.get("reliability")), _num(m.get("val_reliability")),
         "calibration term of the Brier score: 0 is calibrated"),
        ("cases", cases(""), cases("val_"), ""),
    ]


def epochs_of(r: dict) -> list[dict]:
    """A result's per-epoch history (what of it is well formed)."""
    history = r.get("history")
    return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []


def facts(r: dict) -> list[tuple[str, str]]:
    """What the run was: settings, data, devices and times, as (label, value) rows."""
    hp, times, batch, dev, data, stop = (section(r, k) for k in ("hparams", "times", "batch", "devices", "data",
                                                                 "early_stop"))
    history = epochs_of(r)
    epochs = f"{len(history)} of {hp.get('epochs')}" if len(history) != hp.get("epochs") else str(len(history))
    if stop:
        epochs += (f"; patience {stop.get('patience')}: " + ("stopped early" if stop.get("stopped") else "not stopped")
                   + f", epoch {stop.get('scored_epoch')} scored")
    model = (f"the paper's CNN{', pooling after conv 3 (its code)' if hp.get('model.pool3') else ''}, dropout "
             f"{hp.get('model.dropout')}, pos_weight {hp.get('model.pos_weight')}")
    synth = [hp.get(f"data.synth.{k}") for k in ("days", "patches_per_day", "seed")]
    source = hp.get("data.source") or f"synthetic, {synth[0]} days × {synth[1]} storms (seed {synth[2]})"
    label = (f"{hp.get('data.label.reduce')} of RVORT1_MAX_future {'≥' if hp.get('data.label.inclusive') else '>'} "
             f"{hp.get('data.label.threshold')} s⁻¹")
    val = hp.get("data.split.val_fraction")
    split = f"test from run date {hp.get('data.split.test_start')}; " + (
        f"validation: the last {_num(100 * val, 3)}% of the earlier run dates" if isinstance(val, (int, float)) and val
        else "no validation split")
    sizes = ", ".join(f"{k.removeprefix('n_')} {data[k]:,}" for k in ("n_train", "n_val", "n_test") if k in data)
    if data.get("samples_per_epoch"):
        sizes += f"; {data['samples_per_epoch']:,} samples per epoch"
    names = ", ".join(dict.fromkeys(dev.get("names") or []))
    rows = [
        ("settings given", " ".join(r.get("overrides") or []) or "(the defaults)"),
        ("model", model),
        ("epochs", epochs),
        ("batch", f"{batch.get('global')} ({batch.get('per_device')} per device × {batch.get('devices')})"),
        ("learning rate", str(hp.get("lr"))),
        ("data", f"{source}; multiplier {hp.get('data_multiplier')}, {hp.get('augmentation')}"),
        ("label", label), ("split", split), ("cases", sizes),
        ("seed", str(hp.get("seed"))),
        ("device", f"{dev.get('count')} × {dev.get('accelerator')}" + (f" ({names})" if names else "")),
        ("training time", f"{_num(times.get('wall_s'))} s ({_num(r.get('samples_per_s'))} samples/s); waiting for "
                          f"data {_num(times.get('data_wait_s'))} s"),
        ("whole run", f"{_num(times.get('total_s'))} s, of which scoring the validation split after each epoch "
                      f"{_num(times.get('epoch_scoring_s'))} s and the test set {_num(times.get('test_s'))} s"),
    ]
    if r.get("resumed_after_epochs"):
        rows.append(("resumed", f"after epoch {r['resumed_after_epochs']}: the times include the earlier session's"))
    versions = ", ".join(f"{k} {v}" for k, v in section(r, "versions").items())
    rows.append(("run", f"{r.get('host')}, {r.get('started')} to {r.get('finished')}; {versions}"))
    return rows


def _table(head: list[str] | None, rows: list[list[str]], bold: int | None = None, cls: str = "list") -> str:
    e = html.escape
    th = "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead>" if head else ""
    body = "".join(("<tr class=\"best\">" if i == bold else "<tr>") + "".join(f"<td>{e(c)}</td>" for c in row)
                   + "</tr>" for i, row in enumerate(rows))
    return f'<table class="{cls}">{th}<tbody>{body}</tbody></table>'


def render(r: dict, run_dir: Path, images: dict[str, tuple[str, bytes]], notes: list[str], css: str) -> str:
    """The run's page: status, scores (test and validation), facts, epochs, figures."""
    e = html.escape
    title = f"Run report: {run_dir.name}"
    status = str(r.get("status"))
    chip = {"ok": "okc", "failed": "bad"}.get(status, "run")
    body = [f"<h1>{e(title)}</h1>", f'<p class="sub">{e(str(run_dir.resolve()))}</p>',
            f'<div class="chips"><span class="{chip}">{e(status)}</span></div>',
            '<nav><a href="#scores">Scores</a><a href="#run">The run</a><a href="#epochs">Epochs</a>'
            '<a href="#plots">Plots</a></nav>']
    if r.get("error"):
        body.append(f'<p class="err">{e(str(r["error"]))}</p>')
    m = section(r, "metrics")
    body.append('<h2 id="scores">Scores</h2>')
    if m:
        body.append('<p class="note">On the test cases, never seen in training or in choosing anything, and on the '
                    "validation split (where the threshold was chosen).</p>")
        body.append(_table(["score", "test", "validation", "how to read it"], [list(row) for row in score_rows(m)],
                           cls="list scores"))
    else:
        body.append('<p class="note">' + {"running": "None yet: the run is still going.",
                                          "ok": "None recorded in its result.json."}.get(
            status, "None: the run did not finish.") + "</p>")
    body += ['<h2 id="run">The run</h2>', _table(None, [list(row) for row in facts(r)])]
    history = epochs_of(r)
    body.append('<h2 id="epochs">Epochs</h2>')
    if history:
        best = best_epoch(history)
        times = [h.get("epoch_s") for h in history]
        total = [sum(t for t in times[:i + 1] if t is not None) for i in range(len(times))]
        rows = [[str(h.get("epoch", i) + 1), _num(h.get("train_loss")), _num(h.get("train_acc")),
                 _num(h.get("val_roc_auc")), _num(h.get("epoch_s"), 3), _num(total[i], 3)]
                for i, h in enumerate(history)]
        body.append(_table(["epoch", "training loss", "training accuracy", "validation ROC AUC", "seconds",
                            "seconds so far"], rows, None if best is None else best - 1))
        if best is not None:
            body.append(f'<p class="note">In bold: epoch {best}, the highest validation ROC AUC.</p>')
    else:
        body.append('<p class="note">No epoch finished.</p>')
    body.append('<h2 id="plots">Plots</h2>')
    for name, (caption, png) in images.items():
        body.append(f'<figure><img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                    f"<figcaption>{e(caption)}</figcaption></figure>")
    if not images:
        body.append('<p class="note">No plots: the run left no history or test predictions.</p>')
    body += [f'<p class="note">{e(n)}</p>' for n in notes]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{e(title)}</title><style>{css}tr.best td{{font-weight:600}}"
            ".scores td:nth-child(2),.scores td:nth-child(3){white-space:nowrap}</style></head>"
            "<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


def text(r: dict) -> str:
    """The terminal's summary: status, the scores (test and validation) and the training time."""
    lines = [f"run {r.get('status')}" + (f": {r['error']}" if r.get("error") else "")]
    m = section(r, "metrics")
    if m:
        rows = [(name, test, val) for name, test, val, _ in score_rows(m)]
        w = [max(len(x[i]) for x in rows + [("", "test", "validation")]) for i in range(3)]
        lines.append(f"{'':<{w[0]}}  {'test':<{w[1]}}  validation")
        lines += [f"{a:<{w[0]}}  {b:<{w[1]}}  {c}" for a, b, c in rows]
    times = section(r, "times")
    if "wall_s" in times:
        n = len(epochs_of(r))
        lines.append(f"trained {n} epoch{'' if n == 1 else 's'} in {_num(times['wall_s'])} s "
                     f"({_num(r.get('samples_per_s'))} samples/s)")
    return "\n".join(lines)
