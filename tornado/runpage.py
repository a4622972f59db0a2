"""One run's report (`python -m tornado.report outputs/runs/<run>`): its scores on the test and validation
cases, what it was (settings, data, devices, times), its epochs, and its figures. tornado.report builds the
figures and calls `render` (the page) and `text` (the terminal's summary). A fact the result.json lacks (a run
refused by a setting check, or interrupted, records few) is left out, never shown as "None"."""
from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

from tornado.cli import counted
from tornado.collect import section
from tornado.errors import is_number
from tornado.records import best_epoch
from tornado.tables import number_text


STAMP = re.compile(rb'<meta name="tornado-inputs" content="([0-9a-f]{64})">')  # what a page was made from


def stamp_of(page: Path) -> str | None:
    """The digest of its inputs that a page was written with (`render`'s `stamp`), None if it has none."""
    try:
        with open(page, "rb") as f:
            found = STAMP.search(f.read(1024))  # in the head, before the style sheet
    except OSError:
        return None
    return found.group(1).decode() if found else None


def _num(v: Any, digits: int = 4) -> str:
    return number_text(v, digits) if is_number(v) else "–"  # number_text: a dash for NaN and inf too


def _known(v: Any) -> bool:
    """A value worth showing: not missing, not NaN."""
    return v is not None and v != "" and not (is_number(v) and not math.isfinite(v))


def _join(parts: list[str], sep: str = ", ") -> str:
    return sep.join(p for p in parts if p)


def _thousands(v: Any) -> str:
    return f"{int(v):,}" if is_number(v) and math.isfinite(v) else ""


def _triple(m: dict, prefix: str, suffix: str) -> str:
    values = [m.get(f"{prefix}{k}{suffix}") for k in ("csi", "pod", "far")]
    return "–" if all(v is None for v in values) else " · ".join(_num(v, 3) for v in values)


def base_rate(m: dict, prefix: str) -> float | None:
    """The share of tornadic cases in the test set (`prefix` "") or the validation split ("val_"), from its
    case counts; None where they are unknown."""
    n, pos = m.get(f"{prefix}n"), m.get(f"{prefix}positives")
    ok = is_number(n) and is_number(pos) and math.isfinite(n) and math.isfinite(pos) and 0 <= pos <= n and n > 0
    return pos / n if ok else None


def _per_set(m: dict, f, digits: int) -> str:
    """f(base rate) on the test set and on the validation split, each where its counts are known."""
    return ", ".join(f"{_num(f(rate), digits)} on {name}" for name, prefix in (("test", ""), ("validation", "val_"))
                     if (rate := base_rate(m, prefix)) is not None)


def score_rows(m: dict) -> list[tuple[str, str, str, str]]:
    """(score, test, validation, how to read it) for the page and the terminal."""
    never = _per_set(m, lambda rate: 1 - rate, 3)
    rates = _per_set(m, lambda rate: rate, 3)

    def auc(prefix: str) -> str:
        v, se = m.get(f"{prefix}roc_auc"), m.get(f"{prefix}roc_auc_se")
        return _num(v) + (f" ± {_num(se, 2)}" if is_number(se) and math.isfinite(se) else "")

    def cases(prefix: str) -> str:
        n, pos = _thousands(m.get(f"{prefix}n")), _thousands(m.get(f"{prefix}positives"))
        return n + (f" ({pos} tornadic)" if pos else "") if n else "–"

    chosen = m.get("threshold")  # NaN without a validation split: no row for it
    picked = [(f"CSI · POD · FAR at {_num(chosen, 3)} (chosen on validation)", _triple(m, "", ""),
               _triple(m, "val_", "_best"), "yes/no at the threshold chosen on the validation split (its best there)")]
    return [
        ("accuracy", _num(m.get("accuracy")), _num(m.get("val_accuracy")),
         "share right at probability 0.5, the paper's figure" + (f"; never forecasting a tornado scores {never}"
                                                                  if never else "")),
        ("ROC AUC", auc(""), auc("val_"), "how well tornadic storms rank above the others: 0.5 is chance, 1 perfect; "
                                         "± one standard error"),
        ("average precision", _num(m.get("average_precision")), _num(m.get("val_average_precision")),
         "area under precision against recall" + (f"; the base rate ({rates}) is no skill" if rates else "")),
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


def _has_validation(rows: list[tuple]) -> bool:
    """Whether any score row has a validation figure (a run without a validation split has none)."""
    return any(row[2] not in ("–", "– · – · –", "") for row in rows)


def epochs_of(r: dict) -> list[dict]:
    """A result's per-epoch history (what of it is well formed)."""
    history = r.get("history")
    return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []


def progress(r: dict) -> str:
    """How far a run that did not finish got, to follow "It": "stopped after 2 of 10 epochs"; "" for a finished
    run or one that finished no epoch."""
    n, planned = len(epochs_of(r)), section(r, "hparams").get("epochs")
    if not n or r.get("status") == "ok":
        return ""
    done = f"{n} of {counted(int(planned), 'epoch')}" if is_number(planned) else counted(n, "epoch")
    return f"has finished {done} so far" if r.get("status") == "running" else f"stopped after {done}"


def _epochs_fact(r: dict) -> str:
    hp, stop, n = section(r, "hparams"), section(r, "early_stop"), len(epochs_of(r))
    planned = hp.get("epochs")
    if r.get("status") != "ok":
        if n or not is_number(planned):
            return progress(r)
        return f"none of {planned} finished" if r.get("status") == "failed" else f"{planned} planned"
    text = str(n) if n == planned or not is_number(planned) else f"{n} of {planned}"
    if stop:
        scored = stop.get("scored_epoch")
        text += _join([f"; patience {stop['patience']}: " if _known(stop.get("patience")) else "; ",
                       "stopped early" if stop.get("stopped") else "not stopped",
                       f", epoch {scored} scored" if _known(scored) else ""], "")
    return text


def _model_fact(hp: dict) -> str:
    if not any(k.startswith("model.") for k in hp):
        return ""
    return _join(["the paper's CNN" + (", pooling after conv 3 (its code)" if hp.get("model.pool3") else ""),
                  f"dropout {hp['model.dropout']}" if _known(hp.get("model.dropout")) else "",
                  f"pos_weight {hp['model.pos_weight']}" if _known(hp.get("model.pos_weight")) else ""])


def _data_fact(hp: dict) -> str:
    days, storms, seed = (hp.get(f"data.synth.{k}") for k in ("days", "patches_per_day", "seed"))
    source = hp.get("data.source") or (
        f"synthetic, {days} days × {storms} storms" + (f" (seed {seed})" if _known(seed) else "")
        if _known(days) and _known(storms) else "")
    return _join([source, _join([f"multiplier {hp['data_multiplier']}" if _known(hp.get("data_multiplier")) else "",
                                 str(hp["augmentation"]) if _known(hp.get("augmentation")) else ""])], "; ")


def _label_fact(hp: dict) -> str:
    reduce, threshold = hp.get("data.label.reduce"), hp.get("data.label.threshold")
    if not (_known(reduce) and _known(threshold)):
        return ""
    return f"{reduce} of RVORT1_MAX_future {'≥' if hp.get('data.label.inclusive') else '>'} {threshold} s⁻¹"


def _split_fact(hp: dict) -> str:
    start, val = hp.get("data.split.test_start"), hp.get("data.split.val_fraction")
    return _join([f"test from run date {start}" if _known(start) else "",
                  "" if not is_number(val) else f"validation: the last {_num(100 * val, 3)}% of the earlier run dates"
                  if val else "no validation split"], "; ")


def _batch_fact(batch: dict, hp: dict) -> str:
    total, per, devices = (batch.get(k) for k in ("global", "per_device", "devices"))
    if not _known(total):
        return str(hp["batch_size"]) if _known(hp.get("batch_size")) else ""
    return f"{total}" + (f" ({per} per device × {devices})" if _known(per) and _known(devices) else "")


def _device_fact(dev: dict) -> str:
    count, accelerator = dev.get("count"), dev.get("accelerator")
    names = ", ".join(dict.fromkeys(str(n) for n in dev.get("names") or [] if _known(n)))
    if not _known(accelerator):
        return ""
    return (f"{count} × {accelerator}" if _known(count) else str(accelerator)) + (f" ({names})" if names else "")


def _times_facts(r: dict) -> list[tuple[str, str]]:
    times, rows = section(r, "times"), []
    wall = times.get("wall_s")
    epoch_s = [h.get("epoch_s") for h in epochs_of(r)]
    if not is_number(wall) and epoch_s and all(is_number(t) for t in epoch_s):  # cut short: its epochs' own times
        rows.append(("training time", f"{_num(sum(epoch_s))} s, the finished epochs' own"))
    elif is_number(wall):
        sps, wait = r.get("samples_per_s"), times.get("data_wait_s")
        rows.append(("training time", f"{_num(wall)} s" + (f" ({_num(sps)} samples/s)" if is_number(sps) else "")
                     + (f"; waiting for data {_num(wait)} s" if is_number(wait) else "")))
    if is_number(times.get("total_s")):
        parts = [f"scoring the validation split after each epoch {_num(times['epoch_scoring_s'])} s"
                 if is_number(times.get("epoch_scoring_s")) else "",
                 f"the test set {_num(times['test_s'])} s" if is_number(times.get("test_s")) else ""]
        rows.append(("whole run", f"{_num(times['total_s'])} s" + (f", of which {_join(parts, ' and ')}"
                                                                    if any(parts) else "")))
    return rows


def facts(r: dict) -> list[tuple[str, str]]:
    """What the run was: settings, data, devices and times, as (label, value) rows; unknown ones left out."""
    hp, data = section(r, "hparams"), section(r, "data")
    sizes = ", ".join(f"{k.removeprefix('n_')} {_thousands(data[k])}" for k in ("n_train", "n_val", "n_test")
                      if _thousands(data.get(k)))
    if sizes and _thousands(data.get("samples_per_epoch")):
        sizes += f"; {_thousands(data['samples_per_epoch'])} samples per epoch"
    if sizes and data.get("n_dropped"):
        sizes += f"; {_thousands(data['n_dropped'])} left out for missing values (NaN, inf or a fill value)"
    rows = [
        ("settings given", " ".join(str(o) for o in r.get("overrides") or []) or "(the defaults)"),
        ("model", _model_fact(hp)),
        ("epochs", _epochs_fact(r)),
        ("batch", _batch_fact(section(r, "batch"), hp)),
        ("learning rate", str(hp["lr"]) if _known(hp.get("lr")) else ""),
        ("data", _data_fact(hp)),
        ("label", _label_fact(hp)), ("split", _split_fact(hp)), ("cases", sizes),
        ("seed", str(hp["seed"]) if _known(hp.get("seed")) else ""),
        ("device", _device_fact(section(r, "devices"))),
        *_times_facts(r),
    ]
    before = r.get("resumed_after_epochs")
    if is_number(before) and before and before == len(epochs_of(r)):
        rows.append(("resumed", f"with nothing left to train: all {before} epochs were trained in an earlier "
                                "session, this one scored them again"))
    elif is_number(before) and before:
        rows.append(("resumed", f"after epoch {before}: the times include the earlier session's"))
    when = " to ".join(str(r[k]) for k in ("started", "finished") if _known(r.get(k)))
    versions = ", ".join(f"{k} {v}" for k, v in section(r, "versions").items() if _known(v))
    rows.append(("run", _join([_join([str(r["host"]) if _known(r.get("host")) else "", when]), versions], "; ")))
    return [(label, value) for label, value in rows if value]


def _table(head: list[str] | None, rows: list[list[str]], bold: int | None = None, cls: str = "list") -> str:
    """A table in a box as wide as the page (a narrow screen scrolls the table, not the page); without `head`,
    each row's first cell is its header."""
    e = html.escape
    th = "<thead><tr>" + "".join(f'<th scope="col">{e(h)}</th>' for h in head) + "</tr></thead>" if head else ""
    first = "<td>{}</td>" if head else '<th scope="row">{}</th>'
    body = "".join(("<tr class=\"best\">" if i == bold else "<tr>") + first.format(e(row[0]))
                   + "".join(f"<td>{e(c)}</td>" for c in row[1:]) + "</tr>" for i, row in enumerate(rows))
    return f'<div class="wide"><table class="{cls}">{th}<tbody>{body}</tbody></table></div>'


def _epoch_number(h: dict, i: int) -> int:
    return int(h["epoch"]) if is_number(h.get("epoch")) and math.isfinite(h["epoch"]) else i


def figure(alt: str, caption: str, png: bytes) -> str:
    """A figure of a page, its PNG inline, `alt` saying what it shows to whoever cannot see it. One of several
    panels side by side (over 800 px wide) is of class `panels`: on a narrow screen it scrolls sideways at a size
    its labels can be read at."""
    wide = ' class="panels"' if int.from_bytes(png[16:20], "big") > 800 else ""  # the PNG header's width
    data = base64.b64encode(png).decode()
    return (f'<figure{wide}><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render(r: dict, run_dir: Path, images: dict[str, tuple[str, str, bytes]], notes: list[str], css: str,
           up: str | None = None, stamp: str | None = None) -> str:
    """The run's page: status, scores (test and validation), facts, epochs, figures; a section with nothing to
    show is left out. `up`: the address of the sweep's page it belongs to, linked at the top; `stamp`: a digest
    of what the page is made from, kept in its head (`stamp_of`)."""
    e = html.escape
    title = f"Run report: {run_dir.name}"
    status = str(r.get("status") or "unknown")
    chip = {"ok": "okc", "failed": "bad"}.get(status, "run")
    m, history = section(r, "metrics"), epochs_of(r)
    sections = {"scores": m or status in ("ok", "running"), "run": True, "epochs": bool(history),
                "plots": bool(images) or status == "ok"}
    names = {"scores": "Scores", "run": "The run", "epochs": "Epochs", "plots": "Plots"}
    body = [f"<h1>{e(title)}</h1>", f'<p class="sub">{e(str(run_dir.resolve()))}'
            + (f' · <a href="{e(up)}">the sweep\'s report</a>' if up else "") + "</p>",
            f'<div class="chips"><span class="{chip}">{e(status)}</span></div>',
            "<nav>" + "".join(f'<a href="#{k}">{v}</a>' for k, v in names.items() if sections[k]) + "</nav>"]
    if r.get("error"):
        body.append(f'<p class="err">{e(str(r["error"]))}</p>')
    if progress(r):
        body.append(f'<p class="note">It {e(progress(r))}: below are the epochs it finished.</p>')
    if sections["scores"]:
        body.append('<h2 id="scores">Scores</h2>')
    if m:
        chosen = section(r, "evaluation").get("threshold_from") == "validation"
        body.append('<p class="note">' + e(
            "On the test cases, never seen in training or in choosing the yes/no threshold, and on the validation "
            "split, where the threshold was chosen." if chosen else
            "On the test cases, never seen in training. There is no validation split to choose a yes/no threshold "
            "on: the CSI at the test set's own best threshold is optimistic.") + "</p>")
        rows = score_rows(m)
        keep = [0, 1, 2, 3] if _has_validation(rows) else [0, 1, 3]
        body.append(_table([["score", "test", "validation", "how to read it"][k] for k in keep],
                           [[row[k] for k in keep] for row in rows], cls="list scores"))
    elif sections["scores"]:
        body.append('<p class="note">' + ("No scores yet: the run is still going." if status == "running" else
                                          "No scores in its result.json.") + "</p>")
    body += ['<h2 id="run">The run</h2>', _table(None, [list(row) for row in facts(r)])]
    if history:
        best = best_epoch(history)
        times = [h.get("epoch_s") for h in history]
        total = [sum(t for t in times[:i + 1] if is_number(t)) for i in range(len(times))]
        rows = [[str(_epoch_number(h, i) + 1), _num(h.get("train_loss")), _num(h.get("train_acc")),
                 _num(h.get("val_roc_auc")), _num(h.get("epoch_s"), 3), _num(total[i], 3)]
                for i, h in enumerate(history)]
        body += ['<h2 id="epochs">Epochs</h2>',
                 _table(["epoch", "training loss", "training accuracy", "validation ROC AUC", "seconds",
                         "seconds so far"], rows, None if best is None else best - 1)]
        wall = section(r, "times").get("wall_s")
        note = (f"seconds: the epoch's training; the run's wall time, {_num(wall)} s, also holds what training "
                "does around its epochs (starting, saving checkpoints)." if is_number(wall) else "")
        if best is not None:
            note = f"In bold: epoch {best}, the highest validation ROC AUC. {note}"
        if note:
            body.append(f'<p class="note">{e(note.strip())}</p>')
    if sections["plots"]:
        body.append('<h2 id="plots">Plots</h2>')
    body += [figure(alt, caption, png) for caption, alt, png in images.values()]
    if sections["plots"] and not images:
        body.append('<p class="note">No plots: the run left no history or test predictions.</p>')
    body += [f'<p class="note">{e(n)}</p>' for n in notes]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            + (f'<meta name="tornado-inputs" content="{stamp}">' if stamp else "")
            + "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{e(title)}</title><style>{css}tr.best td{{font-weight:600}}"
            # the scores (the middle columns: test, and validation where there is one) stay on one line; the
            # explanation wraps, but not to a word a line on a narrow screen (its box scrolls instead)
            ".scores td:not(:first-child):not(:last-child){white-space:nowrap}.scores td:last-child{min-width:16em}"
            "</style></head>"
            "<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


def text(r: dict) -> str:
    """The terminal's summary: status, how far it got, the scores (test and validation) and the training time."""
    lines = [f"run {r.get('status') or 'unknown'}" + (f": {r['error']}" if r.get("error") else "")]
    if progress(r):
        lines.append(f"it {progress(r)}")
    m = section(r, "metrics")
    if m:
        rows = [row[:3] for row in score_rows(m)]
        cols = 3 if _has_validation(rows) else 2  # without a validation split, its column goes
        head, rows = ("", "test", "validation")[:cols], [row[:cols] for row in rows]
        w = [max(len(x[i]) for x in [head, *rows]) for i in range(cols)]
        lines += ["  ".join(f"{x[i]:<{w[i]}}" for i in range(cols)).rstrip() for x in [head, *rows]]
    wall, sps = section(r, "times").get("wall_s"), r.get("samples_per_s")
    if is_number(wall):
        n = len(epochs_of(r))
        lines.append(f"trained {counted(n, 'epoch')} in {_num(wall)} s"
                     + (f" ({_num(sps)} samples/s)" if is_number(sps) else ""))
    stop = section(r, "early_stop")
    if stop.get("stopped"):
        lines.append(f"stopped early (patience {stop.get('patience')}): epoch {stop.get('scored_epoch')}'s weights "
                     "scored")
    return "\n".join(lines)
