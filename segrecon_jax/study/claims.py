"""The paper's claims as data, and their verdicts from paired per-slice differences across seeds (`stats`)."""

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from segrecon_jax import stats
from segrecon_jax.study import plan
from segrecon_jax.study import results as results_lib
from segrecon_jax.training import reporting


@dataclasses.dataclass(frozen=True)
class Claim:
  text: str
  better: str  # The row the claim says is ahead.
  worse: str
  keys: Tuple[str, ...]  # Metrics the claim is about.


def paper_claims() -> List[Claim]:
  """Each claim of the paper that Tables 1 and 2 test."""
  found = []
  for joint in ('Multi-Decoder UNet', 'UNet -> UNet', 'CascadeNet -> MANet'):
    found.append(Claim(f'Stabilization helps {joint} on the F- metrics', reporting.row_name(joint, True), joint,
                       plan.FOCUSED))
  # Sect. 2.2: without stabilization the joint model may settle where "either network yields undesirably poor
  # performance": the segmentation side of that claim.
  for joint in ('Multi-Decoder UNet', 'UNet -> UNet', 'CascadeNet -> MANet'):
    found.append(Claim(f'Stabilization helps {joint}\'s segmentation (Dice)', reporting.row_name(joint, True), joint,
                       ('dice_mean',)))
  for solo, joint in (('UNet', reporting.row_name('UNet -> UNet', True)),
                      ('CascadeNet', reporting.row_name('CascadeNet -> MANet', True))):
    found.append(Claim(f'Segmentation-aware {joint} beats solo {solo} on the F- metrics', joint, solo, plan.FOCUSED))
  for table, solo in ((1, 'UNet'), (2, 'CascadeNet')):
    for _, other, _, _ in (row for row in plan.ROWS if row[0] == table and row[1] != solo):
      found.append(Claim(f'Solo {solo} beats {other} on the global metrics', solo, other, plan.GLOBAL))
  return found


@dataclasses.dataclass
class Verdict:
  """A claim's outcome at one acceleration: each metric's `stats.compare` record and the verdict they give."""
  claim: Claim
  acceleration: int
  metrics: Dict[str, Dict[str, Any]]  # key -> stats.paired_statistics record.
  verdict: str  # stats.HOLDS, FAILS, PARTLY, INCONCLUSIVE, or 'not run' without paired data.
  favour: int
  against: int

  @property
  def seeds(self) -> int:
    return min((m['seeds'] for m in self.metrics.values()), default=0)

  @property
  def slices(self) -> List[int]:
    return sorted({m['slices'] for m in self.metrics.values()})


def compare_rows(better: Mapping[int, dict], worse: Mapping[int, dict],
                 keys: Sequence[str]) -> Tuple[Dict[str, Dict[str, Any]], str, int, int]:
  """Per-metric paired statistics of two rows ({seed: per-slice record}) and the verdict they give."""
  found = {}
  for key in keys:
    record = stats.compare(better, worse, key, plan.SIGNS.get(key, 1))
    if record is not None:
      found[key] = record
  if not found:
    return found, 'not run', 0, 0
  name, favour, against = stats.verdict(list(found.values()))
  return found, name, favour, against


def evaluate(results: Dict[Tuple[str, int], Dict[int, Dict[str, Any]]],
             claims: Optional[Sequence[Claim]] = None) -> List[Verdict]:
  """The verdict of every claim at every acceleration, from the rows' per-slice records (`results.collect`)."""
  verdicts = []
  for claim in claims or paper_claims():
    for acceleration in plan.ACCELERATIONS:
      better = results_lib.per_slice(results.get((claim.better, acceleration), {}))
      worse = results_lib.per_slice(results.get((claim.worse, acceleration), {}))
      metrics, name, favour, against = compare_rows(better, worse, claim.keys)
      verdicts.append(Verdict(claim, acceleration, metrics, name, favour, against))
  return verdicts


def verdict_words(verdict: Verdict) -> str:
  if verdict.verdict == stats.PARTLY:
    return (f'partly ({verdict.favour} of {len(verdict.metrics)} metrics for it'
            + (f', {verdict.against} against it' if verdict.against else '') + ')')
  return {stats.INCONCLUSIVE: 'inconclusive: every interval holds 0'}.get(verdict.verdict, verdict.verdict)


def format_metric(key: str, record: Dict[str, Any]) -> str:
  """'F-PSNR -0.8445 [-1.0394, -0.6393], per seed -0.81 / -0.88, p = 2.6e-08'."""
  text = f'{plan.NAMES.get(key, key)} {record["effect"]:+.4f} [{record["low"]:+.4f}, {record["high"]:+.4f}]'
  if len(record['seed_effects']) > 1:
    text += ', per seed ' + ' / '.join(f'{e:+.2f}' for e in record['seed_effects'])
  return text + f', p = {record["p"]:.2g}'


def format_verdict(verdict: Verdict) -> str:
  """One line of the report: the verdict, each metric's effect, interval, per-seed effects and p, and the counts."""
  head = f'- x{verdict.acceleration}: {verdict.claim.text}: **{verdict_words(verdict)}**'
  if not verdict.metrics:
    return head + ' (no per-slice results of both rows yet).'
  seeds = verdict.seeds
  scope = f'{seeds} seeds, interval over seeds and slices' if seeds > 1 else '1 seed, interval over slices only'
  body = '; '.join(format_metric(k, r) for k, r in verdict.metrics.items())
  return head + f' ({body}; {scope}; {"/".join(map(str, verdict.slices))} slices).'
