"""A sweep's results: mean ± 95% interval over seeds per cell, differences paired by seed, and for
staged sweeps the paper's Table 1 shape (baseline, each fine-tune, both differences, the paper).

Words follow the intervals: a difference is "better" or "worse" only when its interval excludes
zero, else "within noise".
"""
import csv
import io
import math

from etils import epath
import numpy as np
from scipy import stats

# Besides learned/control/muller − the fixed baseline: what the learned resizer is compared with.
BASELINES = ("bilinear", "bicubic")
ALSO_AGAINST = {"learned": ("control", "muller")}
# Row keys that are not factors of a cell.
NOT_FACTORS = ("point", "seed", "step", "stage", "from", "state", "error")


def headline_metric(rows) -> str:
  """The paper's headline number of the task the rows are runs of (resizer_jax/tasks.py)."""
  # Here, not at the top: tasks imports JAX, which sweep plans and dry runs never load.
  from resizer_jax import tasks  # pylint: disable=g-import-not-at-top
  for metric in tasks.HEADLINE_METRICS:
    if all(metric in r for r in rows):
      return metric
  raise ValueError(f"the sweep's results have none of the metrics "
                   f"{', '.join(tasks.HEADLINE_METRICS)} in every row")


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
  """(mean, half-width of the t confidence interval); the half-width is nan for one value."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(values.mean()), math.nan
  half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
  return float(values.mean()), float(half)


def _natural(key):
  """Sort key of a cell: numbers by value (8 < 16 < 32), then text."""
  def one(v):
    try:
      return (0, float(v), "")
    except (TypeError, ValueError):
      return (1, 0.0, str(v))
  return tuple((k, one(v)) for k, v in key)


def cell_key(row) -> tuple:
  return tuple(sorted((k, str(v)) for k, v in row.items()
                      if k not in NOT_FACTORS and not k.startswith("eval/")))


def _cells(rows, metric):
  """{(factor, value) pairs: {seed: metric}} over the finished rows."""
  cells = {}
  for r in rows:
    cells.setdefault(cell_key(r), {})[r.get("seed", 0)] = r[metric]
  return dict(sorted(cells.items(), key=lambda kv: _natural(kv[0])))


def _label(key, skip=()) -> str:
  return ", ".join(f"{k}={v}" for k, v in key if k not in skip)


def write(all_rows, workdir, metric: str | None = None, paper: dict | None = None):
  """results.csv (a row per point, finished or not), results.md and results.png in `workdir`, for
  `metric` (default: the headline one; e.g. "eval/live_running/accuracy" for one eval variant).
  `paper`: {backbone: {resizer: reported number}} (a config's PAPER) for the Table 1 section."""
  columns = sorted({k for r in all_rows for k in r if not k.startswith("eval/")}) + sorted(
      {k for r in all_rows for k in r if k.startswith("eval/")})
  table = io.StringIO()
  writer = csv.DictWriter(table, fieldnames=columns)
  writer.writeheader()
  writer.writerows(all_rows)
  (epath.Path(workdir) / "results.csv").write_text(table.getvalue())

  rows = [r for r in all_rows if r.get("state", "finished") == "finished"]
  metric = metric or headline_metric(rows)
  if not all(metric in r for r in rows):
    raise ValueError(f"not every run reports {metric!r}; they have: "
                     f"{', '.join(sorted(set.intersection(*(set(r) for r in rows))))}")
  cells = _cells(rows, metric)
  lines = [f"{metric}: mean ± 95% CI (t) over seeds", "", "| cell | seeds | mean | ± 95% CI |",
           "|---|---:|---:|---:|"]
  for key, by_seed in cells.items():
    mean, half = mean_ci(list(by_seed.values()))
    lines.append(f"| {_label(key)} | {len(by_seed)} | {mean:.4f} | {half:.4f} |")
  diffs = []
  for key, by_seed in cells.items():
    props = dict(key)
    if props.get("resizer") in (None, *BASELINES):
      continue
    for base in BASELINES + ALSO_AGAINST.get(props["resizer"], ()):
      base_key = tuple(sorted({**props, "resizer": base}.items()))
      if base_key in cells:
        seeds = sorted(set(by_seed) & set(cells[base_key]))
        if seeds:
          mean, half = mean_ci([by_seed[s] - cells[base_key][s] for s in seeds])
          diffs.append(f"| {_label(key, ('resizer',))} | {props['resizer']} − {base} | "
                       f"{len(seeds)} | {mean:+.4f} | {half:.4f} |")
  if diffs:
    lines += ["", "Differences, paired by seed:", "",
              "| cell | difference | seeds | mean | ± 95% CI |", "|---|---|---:|---:|---:|"] + diffs
  lines += _table1_lines(all_rows, metric, paper or {})
  lines += _variant_lines(rows, metric)
  unfinished = [r for r in all_rows if r.get("state", "finished") != "finished"]
  if unfinished:
    lines += ["", "Points without a result:", "", "| point | state | why |", "|---|---|---|"]
    lines += [f"| {r['point']} | {r['state']} | {_why(r)} |" for r in unfinished]
  (epath.Path(workdir) / "results.md").write_text("\n".join(lines) + "\n")
  _plot(cells, metric, epath.Path(workdir) / "results.png")


def _why(row) -> str:
  if row["state"] == "blocked":
    return f"it starts from {row['from']}, which did not finish"
  return row.get("error", "")


def _shown(metric: str):
  """(name, value -> shown, difference -> shown, lower is better) for the Table 1 section: top-1
  error in percent for an accuracy, the metric itself otherwise."""
  if metric.endswith("accuracy"):
    return "top-1 error (%)", lambda v: 100 * (1 - v), lambda d: -100 * d, True
  return metric.split("/")[-1], lambda v: v, lambda d: d, False


def _verdict(mean: float, half: float, lower_is_better: bool) -> str:
  if math.isnan(half):
    return "one seed: no interval"
  if abs(mean) <= half:
    return "within noise"
  return "better" if (mean < 0) == lower_is_better else "worse"


def _table1_lines(all_rows, metric, paper) -> list[str]:
  """Per baseline (a stage-0 cell that later points start from): its number, each fine-tune's,
  the fine-tune minus the bilinear (bicubic) fine-tune and minus the baseline it started from, both
  paired by seed, and the paper's number."""
  starts = [r for r in all_rows if r.get("from")]
  if not starts:
    return []
  done = {r["point"]: r for r in all_rows if r.get("state", "finished") == "finished"}
  name, show, show_diff, lower = _shown(metric)
  fmt = ".2f" if lower else ".4f"
  lines = ["", f"Table 1 shape: {name}, mean ± 95% CI over seeds; differences paired by seed "
           "(a fine-tune against the fixed-resizer fine-tune of the same seed, and against the "
           "baseline run it started from)", "",
           "| baseline | run | seeds | " + name + " | − fixed fine-tune | − its baseline | paper |",
           "|---|---|---:|---:|---|---|---:|"]
  roots = {}
  for r in all_rows:
    if not r.get("from") and any(s["from"] == r["point"] for s in starts):
      roots.setdefault(cell_key(r), []).append(r)
  for root_key, root_rows in sorted(roots.items(), key=lambda kv: _natural(kv[0])):
    props = dict(root_key)
    reported = paper.get(props.get("backbone"), {})
    names = {r["point"] for r in root_rows}
    base_values = [show(done[r["point"]][metric]) for r in root_rows if r["point"] in done]
    label = _label(root_key)
    if base_values:
      mean, half = mean_ci(base_values)
      lines.append(f"| {label} | baseline ({props.get('resizer', '')}) | {len(base_values)} | "
                   f"{mean:{fmt}} ± {half:{fmt}} | | | {reported.get(props.get('resizer'), '')} |")
    else:
      lines.append(f"| {label} | baseline | 0 | not finished | | | |")
    followers = [r for r in starts if r["from"] in names]
    keys = sorted({cell_key(r) for r in followers}, key=_natural)
    varying = {k for k, _ in set().union(*keys) if len({dict(c).get(k) for c in keys}) > 1}
    for key in keys:
      cell = [r for r in followers if cell_key(r) == key]
      finished = {r.get("seed", 0): done[r["point"]] for r in cell if r["point"] in done}
      what = _label(tuple((k, v) for k, v in key if k in varying)) or _label(key)
      if not finished:
        lines.append(f"| | {what} | 0 | not finished | | | |")
        continue
      mean, half = mean_ci([show(r[metric]) for r in finished.values()])
      resizer = dict(key).get("resizer")
      fixed = ""
      if resizer not in (None, *BASELINES):
        for base in BASELINES:
          other = tuple(sorted({**dict(key), "resizer": base}.items()))
          pairs = {r.get("seed", 0): done[r["point"]][metric] for r in followers
                   if cell_key(r) == other and r["point"] in done}
          seeds = sorted(set(pairs) & set(finished))
          if seeds:
            d, h = mean_ci([show_diff(finished[s][metric] - pairs[s]) for s in seeds])
            fixed = f"{base}: {d:+{fmt}} ± {h:{fmt}} ({len(seeds)}), {_verdict(d, h, lower)}"
            break
      from_base = [show_diff(r[metric] - done[r["from"]][metric]) for r in finished.values()
                   if r["from"] in done]
      against = ""
      if from_base:
        d, h = mean_ci(from_base)
        against = f"{d:+{fmt}} ± {h:{fmt}} ({len(from_base)}), {_verdict(d, h, lower)}"
      lines.append(f"| | {what} | {len(finished)} | {mean:{fmt}} ± {half:{fmt}} | {fixed} | "
                   f"{against} | {reported.get(resizer, '') if resizer not in BASELINES else ''} |")
  return lines


def eval_variants(rows, metric) -> list[str]:
  """The eval variants every row reports `metric` under (eval/<variant>/<name>; see
  config_args.evaluation), e.g. ["ema_recomputed", "ema_running", ...]."""
  name = metric.split("/")[-1]  # eval/accuracy or eval/<variant>/accuracy
  found = [set(k.split("/")[1] for k in r if k.count("/") == 2 and k.endswith("/" + name))
           for r in rows]
  return sorted(set.intersection(*found)) if found else []


def _variant_lines(rows, metric) -> list[str]:
  """The spread over seeds under each eval variant, per cell and pooled over cells."""
  variants = eval_variants(rows, metric)
  if not variants:
    return []
  name = metric.split("/")[-1]  # eval/accuracy or eval/<variant>/accuracy
  lines = ["", f"{name} under each eval variant (parameters_statistics): mean ± 95% CI and the "
           "standard deviation over seeds", "",
           "| cell | variant | seeds | mean | ± 95% CI | std |", "|---|---|---:|---:|---:|---:|"]
  pooled = {}
  for variant in variants:
    for key, by_seed in _cells(rows, f"eval/{variant}/{name}").items():
      values = list(by_seed.values())
      mean, half = mean_ci(values)
      std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
      pooled.setdefault(variant, []).append(std)
      lines.append(f"| {_label(key)} | {variant} | {len(values)} | "
                   f"{mean:.4f} | {half:.4f} | {std:.4f} |")
  lines += ["", "Standard deviation over seeds, pooled over the cells (root mean square):", "",
            "| variant | cells | pooled std |", "|---|---:|---:|"]
  for variant, stds in pooled.items():
    lines.append(f"| {variant} | {len(stds)} | {math.sqrt(np.nanmean(np.square(stds))):.4f} |")
  return lines


def _plot(cells, metric, path):
  """Each cell's mean ± 95% interval: against the target resolution when the cells have one, else
  one marker per cell (e.g. a Table 1 sweep's baselines and fine-tunes)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  # Against the target when the cells span several (a Table 1 sweep's are all 224: one marker each).
  by_target = (all("target" in dict(key) for key in cells) and
               len({dict(key)["target"] for key in cells}) > 1)
  lines = {}
  for i, (key, by_seed) in enumerate(cells.items()):
    props = dict(key)
    x = float(props["target"]) if by_target else i
    label = _label(key, ("target",)) if by_target else _label(key)
    lines.setdefault(label, []).append((x, *mean_ci(list(by_seed.values()))))
  fig, ax = plt.subplots(figsize=(6, 4) if by_target else (10, 1.5 + 0.35 * len(cells)))
  for i, (label, pts) in enumerate(sorted(lines.items()) if by_target else lines.items()):
    x, mean, half = map(np.asarray, zip(*sorted(pts)))
    if by_target:  # Side by side at each target, so that the intervals do not hide each other.
      ax.errorbar(x + 0.25 * (i - (len(lines) - 1) / 2), mean, yerr=np.nan_to_num(half),
                  marker="o", capsize=3, label=label)
    else:
      ax.errorbar(mean, x, xerr=np.nan_to_num(half), marker="o", capsize=3, linestyle="none")
  if by_target:
    ax.set_xlabel("target resolution (px)")
    ax.set_ylabel(f"{metric}\n(mean ± 95% CI over seeds)")
    ax.legend(fontsize=8)
  else:
    ax.set_yticks(range(len(lines)), list(lines), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric}\n(mean ± 95% CI over seeds)")
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100)
  path.write_bytes(png.getvalue())
  plt.close(fig)
