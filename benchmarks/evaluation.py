"""Detection quality against labelled episodes: recall, false alarms per 1,000 readings, delay.

An alarm is what a detector stores: a z-score anomaly (one reading) or a streaming
episode (first to last abnormal reading). A labelled episode counts as detected when an
alarm of its series overlaps it or starts within `grace` after its end (a level shift
is often noticed at its last reading, when the signal steps back); the delay is from
the episode's start to that alarm's start (0 when the alarm was already open). An alarm
that overlaps no labelled episode, grace included, is a false alarm.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from iotpipe.model import Micros

Span = tuple[Micros, Micros]  # (first, last), inclusive


@dataclass
class DetectionQuality:
    episodes: int = 0
    detected: int = 0
    alarms: int = 0
    false_alarms: int = 0
    readings: int = 0
    delays: list[Micros] = field(default_factory=list)  # one per detected episode

    @property
    def recall(self) -> float:
        return self.detected / self.episodes if self.episodes else float("nan")

    @property
    def alarms_per_episode(self) -> float:
        """Alarms that hit a labelled episode, per episode detected: 1.0 is one alarm each."""
        return (self.alarms - self.false_alarms) / self.detected if self.detected else float("nan")

    @property
    def false_alarms_per_1000(self) -> float:
        return 1000.0 * self.false_alarms / self.readings if self.readings else float("nan")

    def median_delay(self) -> float:
        return float(statistics.median(self.delays)) if self.delays else float("nan")

    def add(self, other: DetectionQuality) -> None:
        self.episodes += other.episodes
        self.detected += other.detected
        self.alarms += other.alarms
        self.false_alarms += other.false_alarms
        self.readings += other.readings
        self.delays.extend(other.delays)


def evaluate(
    truth: dict[Hashable, list[Span]],
    alarms: dict[Hashable, list[Span]],
    readings: int,
    grace: Micros = 0,
) -> DetectionQuality:
    """Score alarms against labelled episodes, series by series (keys are series)."""
    quality = DetectionQuality(readings=readings)
    for key in set(truth) | set(alarms):
        labelled = sorted(truth.get(key, []))
        raised = sorted(alarms.get(key, []))
        quality.add(_one_series(labelled, raised, grace))
    quality.readings = readings
    return quality


def _one_series(labelled: list[Span], raised: list[Span], grace: Micros) -> DetectionQuality:
    quality = DetectionQuality(episodes=len(labelled), alarms=len(raised))
    starts = [start for start, _ in raised]
    for start, end in labelled:
        # Alarms starting before the episode's extended end; among them, those still
        # open at its start overlap it.
        last = bisect.bisect_right(starts, end + grace)
        hits = [a for a in raised[:last] if a[1] >= start]
        if hits:
            quality.detected += 1
            quality.delays.append(max(0, min(a[0] for a in hits) - start))
    quality.false_alarms = sum(1 for alarm in raised if not _touches_any(alarm, labelled, grace))
    return quality


def _touches_any(alarm: Span, labelled: Iterable[Span], grace: Micros) -> bool:
    return any(alarm[0] <= end + grace and alarm[1] >= start for start, end in labelled)
