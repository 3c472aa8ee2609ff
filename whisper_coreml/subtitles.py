"""Subtitle cues: what every subtitle format writes, built once from the transcription.

Whisper's segments are not subtitles (they run 10-25 s and ignore reading speed), so the
writers never see segments directly: they see `Cue`s, built either under `CueRules` (the
default, `build_cues`) or one per segment (`raw_cues`, for users who want Whisper's own
segmentation). `check_cues` names every rule a list of cues breaks, and why when it could not
be helped, so tests and reports measure the same thing the builder aims for; `report_cues`
sums that up per file for the CLI's summary and `--report` JSON.

The builder works on chunks: runs of words with no allowed break inside (a word, "42-line",
or CJK characters glued to their closing punctuation). It picks cue breaks by dynamic
programming over chunk boundaries, preferring sentence ends, then clause punctuation, then
pauses, then balanced cues; lays each cue out in the fewest balanced lines; and finally times
the cues on the frame grid, extending short or dense cues into the following gap.

max_duration and min_duration are hard limits. A word spoken (or aligned) over more than
max_duration is shown again in further cues that share its span; a cue too short for
min_duration starts earlier or delays the next cue. Only the media's end can leave a cue
short. Reading speed and one-word cues are soft: the builder avoids them, the report counts them.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from whisper_coreml.result import Segment, TranscriptionResult, Word
from whisper_coreml.timecode import DEFAULT_FRAME_RATE, FrameRate


@dataclass(frozen=True)
class Cue:
    """One subtitle on screen: its span in seconds, its lines as displayed, and the words
    (with their own times) it was built from, when word timestamps were computed.

    `continued` marks a cue that shows the previous cue's text again: a single word lasting
    longer than max_duration is split by time, each piece showing the whole word."""

    start: float
    end: float
    lines: tuple[str, ...]
    words: tuple[Word, ...] = ()
    continued: bool = False

    @property
    def text(self) -> str:
        """The lines joined by newlines."""
        return "\n".join(self.lines)


@dataclass(frozen=True)
class CueRules:
    """Subtitle style rules; defaults follow professional style guides (Netflix, BBC)."""

    max_line_width: int = 42  # display columns: CJK full-width characters count 2
    max_lines: int = 2
    max_cps: float = 20.0  # reading speed, characters per second
    min_duration: float = 5 / 6
    max_duration: float = 7.0
    min_gap_frames: int = 2
    fps: FrameRate = DEFAULT_FRAME_RATE  # the frame grid cue gaps are counted on

    def __post_init__(self) -> None:
        # The CLI passes user values straight in: reject the ones no cue could satisfy.
        if self.max_line_width < 1 or self.max_lines < 1 or self.min_gap_frames < 0:
            raise ValueError("max line width and max lines must be at least 1, the minimum gap at least 0 frames")
        if not self.max_cps > 0:
            raise ValueError(f"max characters per second must be positive, not {self.max_cps}")
        if not 0 <= self.min_duration < self.max_duration < math.inf:
            raise ValueError(f"cue durations need 0 <= min ({self.min_duration:g} s) < max ({self.max_duration:g} s)")
        if self.shortest_frames > self.longest_frames:
            raise ValueError(
                f"no whole number of {self.fps.name} fps frames lies between the minimum ({self.min_duration:g} s)"
                f" and maximum ({self.max_duration:g} s) cue duration"
            )

    @property
    def min_gap(self) -> float:
        """The shortest time between two cues, in seconds."""
        return float(self.min_gap_frames * self.fps.frame_duration)

    @property
    def shortest_frames(self) -> int:
        """min_duration rounded up to whole frames (at least one): the shortest cue built."""
        return max(math.ceil(self.min_duration / self.fps.frame_duration - 1e-9), 1)

    @property
    def longest_frames(self) -> int:
        """max_duration rounded down to whole frames: the longest cue built."""
        return math.floor(self.max_duration / self.fps.frame_duration + 1e-9)


@dataclass(frozen=True)
class Violation:
    """One rule one cue breaks: `value` against `limit`, and `reason` when the builder could not
    have done better (speech faster than the reading speed allows, a word wider than a line);
    an empty reason means the rule was broken by choice and is a bug in the builder."""

    index: int
    rule: str  # a CueRules field name, "min_gap" for cues closer than min_gap_frames, or "one_word"
    value: float
    limit: float
    reason: str = ""


def raw_cues(result: TranscriptionResult) -> tuple[Cue, ...]:
    """One cue per segment with visible text, lines as Whisper wrote them (`--cues raw`)."""
    cues = []
    for segment in result.segments:
        lines = tuple(line.strip() for line in segment.text.splitlines() if line.strip())
        if lines:
            cues.append(Cue(segment.start, max(segment.start, segment.end), lines, tuple(segment.words or ())))
    return tuple(cues)


# --- text measures --------------------------------------------------------------------------

# No line may start with these (Japanese kinsoku shori plus Western closing punctuation) ...
_CLOSING = set("、。，．・：；？！ー～’”」』）〕］｝〉》】〙〗〟‐゠々〻ゝゞヽヾ)]},.!?:;%")
_CLOSING |= set("ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶ")  # small kana
# ... or end with these.
_OPENING = set("‘“「『（〔［｛〈《【〘〖〝([{")
_QUOTES = "\"'’”»」』）)]}"
_SENTENCE_END = set(".!?…。！？")
_CLAUSE_END = set(",;:—–、，；：")
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "vs.", "e.g.", "i.e.", "no.", "mt."}
_INITIAL = re.compile(r"^(?:[A-Z]\.)+$")  # "J." or "U.S." inside a name
# Breaking before these reads naturally; breaking after these splits a phrase (English only).
_CONJUNCTIONS = {"and", "but", "or", "nor", "so", "yet", "because", "although", "though", "while", "whereas"}
_CONJUNCTIONS |= {"which", "who", "whom", "whose", "that", "when", "where", "if", "unless", "until", "since"}
_BINDING = {"a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "with", "from", "into", "my", "your"}
_BINDING |= {"his", "her", "its", "our", "their", "this", "these", "those", "mr.", "mrs.", "ms.", "dr."}


def display_width(text: str) -> int:
    """Columns `text` takes on screen: wide and full-width characters (CJK) count 2, combining
    marks 0, everything else 1."""
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _unspaced(ch: str) -> bool:
    """Characters of scripts written without spaces (Han, kana, full-width forms), which lines
    may break between. Hangul is wide too, but Korean puts spaces between words."""
    hangul = "\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f" or "\uac00" <= ch <= "\ud7af"
    return unicodedata.east_asian_width(ch) in "WF" and not hangul


def _can_break(left: str, right: str) -> bool:
    """May a line or cue end after `left` and the next start with `right`? At a space always;
    without one only next to unspaced-script characters, and never before closing or after
    opening punctuation: the "never inside a word" rule."""
    if right[:1].isspace() or not left.strip():
        return True
    a, b = left[-1], right[0]
    return (_unspaced(a) or _unspaced(b)) and b not in _CLOSING and a not in _OPENING


def _split_text(text: str) -> list[str]:
    """`text` cut wherever `_can_break` allows, each piece keeping its leading whitespace."""
    pieces = []
    for run in re.findall(r"\s*\S+", text):
        piece = run[: len(run) - len(run.lstrip()) + 1]
        for ch in run[len(piece) :]:
            if _can_break(piece, ch):
                pieces.append(piece)
                piece = ch
            else:
                piece += ch
        pieces.append(piece)
    return pieces


def _sentence_end(text: str) -> bool:
    word = text.strip()
    core = word.rstrip(_QUOTES)
    return core[-1:] in _SENTENCE_END and word.lower() not in _ABBREVIATIONS and not _INITIAL.match(word)


def _reading_chars(lines: tuple[str, ...] | list[str]) -> int:
    """The characters a viewer reads, as reading-speed rules count them (line breaks excluded)."""
    return sum(len(line) for line in lines)


# --- chunks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chunk:
    """Text that never breaks inside: one or more words (with leading whitespace kept)."""

    text: str
    start: float
    end: float
    words: tuple[Word, ...]  # the real words; empty when times were spread over the text
    segment_end: bool

    @property
    def lead(self) -> int:
        """Width of the leading whitespace, which disappears at the start of a line."""
        return display_width(self.text) - display_width(self.text.lstrip())


def _segment_units(segment: Segment) -> list[tuple[str, float, float, Word | None]]:
    """(text, start, end, word) pieces of one segment: its words when word timestamps were
    computed, else its text split at allowed breaks with each piece's time proportional to its
    characters inside the segment."""
    if segment.words:
        return [(_spaces(w.word), w.start, max(w.start, w.end), w) for w in segment.words if w.word.strip()]
    pieces = [_spaces(piece) for piece in _split_text(segment.text)]
    total = sum(len(p.strip()) for p in pieces)
    span = max(0.0, segment.end - segment.start)
    units, done = [], 0
    for piece in pieces:
        start = segment.start + span * done / total
        done += len(piece.strip())
        units.append((piece, start, segment.start + span * done / total, None))
    return units


def _spaces(text: str) -> str:
    """Any run of whitespace (a newline too) as one space: lines are ours to break."""
    return re.sub(r"\s+", " ", text)


def _chunks(result: TranscriptionResult) -> list[_Chunk]:
    """All segments' pieces, glued into chunks wherever a break would split a word. A segment
    boundary is always a break; a space is added there when the scripts need one."""
    chunks: list[_Chunk] = []
    for segment in result.segments:
        units = _segment_units(segment)
        for k, (text, start, end, word) in enumerate(units):
            words = (word,) if word else ()
            last = k == len(units) - 1
            if chunks and k == 0 and not _can_break(chunks[-1].text, text):
                text = " " + text
            if chunks and k > 0 and not _can_break(chunks[-1].text, text):
                prev = chunks.pop()
                chunks.append(_Chunk(prev.text + text, prev.start, max(prev.end, end), prev.words + words, last))
            else:
                chunks.append(_Chunk(text, start, end, words, last))
    return chunks


def _line_width(chunks: list[_Chunk], i: int, j: int) -> int:
    return display_width("".join(c.text for c in chunks[i:j]).strip())


def _greedy_lines(chunks: list[_Chunk], i: int, j: int, width: int) -> int:
    """The fewest lines chunks[i:j] fit in (first fit is optimal for the count); a chunk wider
    than a line takes a line of its own."""
    lines, used = 1, -1
    for c in chunks[i:j]:
        full, body = display_width(c.text), display_width(c.text) - c.lead
        if used < 0:
            used = body
        elif used + full <= width:
            used += full
        else:
            lines, used = lines + 1, body
    return lines


# --- costs ----------------------------------------------------------------------------------
# Units are "one break in running text": a cue break there costs CUE + 1.0.
_CUE = 1.0  # every extra cue: prefer fewer, fuller cues
_SPLIT = 3.0  # a good break (a sentence end) left inside a cue
_SPLIT_PAUSE = 12.0  # per second of silence beyond _PAUSE inside a cue, up to _PAUSE_CAP
_PAUSE = 0.25  # silence between words that reads as a boundary (read speech pauses ~0.3 s between sentences)
_PAUSE_CAP = 0.15  # longer silences mark no stronger a boundary
_FILL = 0.5  # an emptier cue (convex, so a long sentence splits into even parts)
_READING = 10.0  # per unit of reading speed over the limit
_SHORT = 25.0  # a cue that cannot stay up for the minimum duration (join it to a neighbour instead)
_BALANCE = 2.0  # uneven lines inside a cue


def _boundary(left: _Chunk, right: _Chunk) -> float:
    """How strongly the speech marks a boundary between `left` and `right`, from 0 (running
    text) to 1 (a sentence end): clause punctuation gives 0.5 and a pause up to 0.45 more, so
    punctuation outranks a pause and both together come close to a sentence end."""
    if _sentence_end(left.text):
        return 1.0
    clause = 0.5 if left.text.strip().rstrip(_QUOTES)[-1:] in _CLAUSE_END else 0.0
    return clause + 0.45 * min(max(right.start - left.end, 0.0) / 0.5, 1.0)


def _break_cost(left: _Chunk, right: _Chunk) -> float:
    """How bad a cue or line break between `left` and `right` reads: 0 at a sentence end, 1 in
    running text, less at a clause end, a pause or before a conjunction, more right after an
    article or preposition (which belongs with what follows)."""
    strength = _boundary(left, right)
    if strength == 1.0:
        return 0.0
    cost = 1.0 - strength
    if right.text.strip().lower() in _CONJUNCTIONS:
        cost -= 0.3
    if left.text.strip().lower() in _BINDING:
        cost += 0.5
    if left.segment_end:
        cost -= 0.1
    return max(cost, 0.05)


def _inside_cost(left: _Chunk, right: _Chunk) -> float:
    """The price of not breaking between `left` and `right` inside a cue: high at a sentence
    end or a comma with a pause, low at a bare comma, and growing with long silences."""
    gap = right.start - left.end
    return _SPLIT * _boundary(left, right) ** 2 + _SPLIT_PAUSE * min(max(gap - _PAUSE, 0.0), _PAUSE_CAP)


def _cue_cost(chunks: list[_Chunk], i: int, j: int, rules: CueRules, media_end: float) -> float:
    """Everything but the break at its end that makes chunks[i:j] a worse cue."""
    start = chunks[i].start
    limit = chunks[j].start - rules.min_gap if j < len(chunks) else media_end
    natural = chunks[j - 1].end - start
    longest = max(natural, min(limit - start, rules.max_duration))
    text = "".join(c.text for c in chunks[i:j]).strip()
    capacity = rules.max_lines * rules.max_line_width
    cost = _CUE + _FILL * (max(capacity - display_width(text), 0) / capacity) ** 2
    cost += _READING * max(len(text) / max(longest, 1e-3) / rules.max_cps - 1, 0.0)
    if longest < rules.min_duration:
        cost += _SHORT * (1 - longest / rules.min_duration)
    return cost


def _cue_spans(chunks: list[_Chunk], rules: CueRules, media_end: float) -> list[tuple[int, int]]:
    """The cheapest partition of the chunks into cues, by dynamic programming over breaks.

    A cue must fit in max_lines lines and last at most max_duration; a cue of one chunk is
    always allowed, so a word too long for either rule still gets shown (`build_cues` then
    splits a word longer than max_duration by time)."""
    n = len(chunks)
    best = [0.0] + [math.inf] * n
    choice = [0] * (n + 1)
    for i in range(n):
        inside = 0.0
        for j in range(i + 1, n + 1):
            if j > i + 1:
                inside += _inside_cost(chunks[j - 2], chunks[j - 1])
                too_long = chunks[j - 1].end - chunks[i].start > rules.max_duration
                if too_long or _greedy_lines(chunks, i, j, rules.max_line_width) > rules.max_lines:
                    break
            cost = best[i] + inside + _cue_cost(chunks, i, j, rules, media_end)
            if j < n:
                cost += _break_cost(chunks[j - 1], chunks[j])
            if cost < best[j]:
                best[j], choice[j] = cost, i
    spans, j = [], n
    while j > 0:
        spans.append((choice[j], j))
        j = choice[j]
    return spans[::-1]


def _layout(chunks: list[_Chunk], rules: CueRules) -> tuple[str, ...]:
    """The cue's text in the fewest lines that fit, choosing among those the breaks that read
    best (after punctuation, before conjunctions) and give the most even line widths."""
    n = len(chunks)
    count = min(_greedy_lines(chunks, 0, n, rules.max_line_width), n)
    width = [[_line_width(chunks, i, j) for j in range(n + 1)] for i in range(n)]
    mean = width[0][n] / count
    # best[k][j]: cheapest way to set chunks[:j] as k lines
    best = [[math.inf] * (n + 1) for _ in range(count + 1)]
    back = [[0] * (n + 1) for _ in range(count + 1)]
    best[0][0] = 0.0
    for k in range(1, count + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                if best[k - 1][i] == math.inf or (j > i + 1 and width[i][j] > rules.max_line_width):
                    continue
                cost = best[k - 1][i] + _BALANCE * ((width[i][j] - mean) / rules.max_line_width) ** 2
                if i > 0:
                    cost += _break_cost(chunks[i - 1], chunks[i])
                if cost < best[k][j]:
                    best[k][j], back[k][j] = cost, i
    lines, j = [], n
    for k in range(count, 0, -1):
        i = back[k][j]
        lines.append("".join(c.text for c in chunks[i:j]).strip())
        j = i
    return tuple(lines[::-1])


@dataclass(frozen=True)
class _Draft:
    """A cue before timing, in frames: where its speech starts and ends, and how long its text
    wants to stay up (min_duration and reading speed)."""

    first: int
    spoken: int
    wanted: int
    lines: tuple[str, ...]
    words: tuple[Word, ...]
    continued: bool = False


def _pieces(first: int, spoken: int, rules: CueRules) -> list[tuple[int, int]]:
    """The frame spans a single word's cue is shown in. A word held longer than max_duration is
    split into even pieces (each showing the whole word: cutting a word's letters apart would
    show fragments nobody said) when what max_duration leaves is at least min_duration; a
    shorter rest is cut, as it would only flash. Pieces are as many as max_duration needs, fewer
    if they would fall under min_duration (the timing then cuts each to max_duration)."""
    shortest, longest, gap = rules.shortest_frames, rules.longest_frames, rules.min_gap_frames
    span = spoken - first
    if span - longest - gap < shortest:
        return [(first, spoken)]
    n = min(math.ceil((span + gap) / (longest + gap)), (span + gap) // (shortest + gap))
    bounds = [first + p * (span + gap) // n for p in range(n + 1)]
    return [(bounds[p], bounds[p + 1] - gap) for p in range(n)]


def _frame_times(drafts: list[_Draft], rules: CueRules, media_end: int | None) -> list[tuple[int, int]]:
    """(start, end) frames for each draft, in one pass. Hard: ends follow starts by min_gap
    frames, every cue lasts shortest..longest frames, and each ends early enough for the cues
    after it to fit before `media_end` at their shortest. Soft: a cue starts with its speech and
    stays up until its speech ends and its text is read, but only into the gap before the
    next cue's speech. A cue still too short starts earlier, into the gap before it, then
    delays the next cue; only the media's end can leave it short."""
    shortest, longest, gap = rules.shortest_frames, rules.longest_frames, rules.min_gap_frames
    latest: list[float] = []
    bound = math.inf if media_end is None else float(media_end)
    for _ in drafts:
        latest.append(bound)
        bound -= shortest + gap
    latest.reverse()
    times: list[tuple[int, int]] = []
    for k, draft in enumerate(drafts):
        earliest = times[-1][1] + gap if times else 0
        start = int(max(earliest, min(draft.first, latest[k] - shortest)))
        free = drafts[k + 1].first - gap if k + 1 < len(drafts) else latest[k]
        end = min(max(draft.spoken, start + draft.wanted), free, start + longest, latest[k])
        if end - start < shortest:
            start = max(earliest, end - shortest)
            end = min(max(end, start + shortest), latest[k])
        times.append((start, int(max(end, start + 1))))
    return times


def build_cues(result: TranscriptionResult, rules: CueRules | None = None) -> tuple[Cue, ...]:
    """Subtitle cues for `result` under `rules` (`--cues rules`, the default).

    Cue times sit on the `rules.fps` frame grid. A cue starts with its first word and ends
    with its last, extended (never past the next cue's first word minus the minimum gap, nor
    the media's end) until it lasts min_duration and is slow enough to read; no cue lasts
    longer than max_duration, and none shorter than min_duration unless the media ends first
    (see `_frame_times` and `_pieces`)."""
    rules = rules or CueRules()
    chunks = _chunks(result)
    media_end = result.duration if result.duration > 0 else math.inf
    spans = _cue_spans(chunks, rules, media_end)
    fps, frame = rules.fps, float(rules.fps.frame_duration)
    drafts: list[_Draft] = []
    for i, j in spans:
        lines = _layout(chunks[i:j], rules)
        words = tuple(w for c in chunks[i:j] for w in c.words)
        first = fps.to_frames(chunks[i].start)
        spoken = max(fps.to_frames(chunks[j - 1].end), first + 1)
        wanted = math.ceil(max(rules.min_duration, _reading_chars(lines) / rules.max_cps) / frame - 1e-9)
        pieces = _pieces(first, spoken, rules) if j == i + 1 else [(first, spoken)]
        drafts += [_Draft(a, z, wanted, lines, words, p > 0) for p, (a, z) in enumerate(pieces)]
    end = fps.to_frames(media_end) if media_end < math.inf else None
    return tuple(
        Cue(float(fps.to_seconds(a)), float(fps.to_seconds(z)), d.lines, d.words, d.continued)
        for d, (a, z) in zip(drafts, _frame_times(drafts, rules, end), strict=True)
    )


def check_cues(cues: Sequence[Cue], rules: CueRules, media_end: float | None = None) -> list[Violation]:
    """Every rule every cue breaks, plus "one_word" for a cue showing a single word that is
    not a sentence by itself ("Printing," or "of", not "Yes." or a heading's "1."). A reason
    is given where the cue could not have obeyed: too fast when the next cue (or `media_end`)
    or max_duration left no room to stretch it, too short when the cues left could not all
    last min_duration before `media_end`, too wide when it is a single unbreakable word, alone
    when sentence ends, pauses or full cues set it apart from both neighbours (`_apart`); the
    pieces of a word split by time are not one-word cues (`report_cues` counts them as split
    words). A cue over max_duration is never excused: the builder splits it."""
    found = []
    gap, frame, tol = rules.min_gap, float(rules.fps.frame_duration), 1e-6
    # the media's end on the frame grid, as build_cues clamps the last cue to it
    end_of_media = math.inf if media_end is None else float(rules.fps.to_seconds(rules.fps.to_frames(media_end)))
    for k, cue in enumerate(cues):
        room = cues[k + 1].start - gap if k + 1 < len(cues) else end_of_media
        duration = cue.end - cue.start
        boxed = cue.end >= room - tol or duration + frame > rules.max_duration  # no frame left to stretch it
        wide = [line for line in cue.lines if display_width(line) > rules.max_line_width]
        unbreakable = all(len(_split_text(line)) == 1 for line in wide)
        cps = _reading_chars(cue.lines) / duration if duration > 0 else math.inf
        checks = [
            ("max_lines", len(cue.lines), rules.max_lines),
            ("max_line_width", max(map(display_width, wide), default=0), rules.max_line_width),
            ("max_cps", cps, rules.max_cps),
            ("max_duration", duration, rules.max_duration),
        ]
        reasons = {
            "max_line_width": "a single word is wider than a line" if unbreakable else "",
            "max_cps": "speech is faster than the reading speed" if boxed else "",
        }
        found += [Violation(k, rule, v, limit, reasons.get(rule, "")) for rule, v, limit in checks if v > limit + tol]
        if duration < rules.min_duration - tol:
            earliest, left = cues[k - 1].end + gap if k else 0.0, len(cues) - k
            crowded = end_of_media - earliest < left * rules.shortest_frames * frame + (left - 1) * gap - tol
            found.append(Violation(k, "min_duration", duration, rules.min_duration, "the media ends" * crowded))
        held = cue.continued or (k + 1 < len(cues) and cues[k + 1].continued)  # report_cues counts these
        if len(_split_text(cue.text)) == 1 and not held and not _sentence_end(cue.text):
            found.append(Violation(k, "one_word", 1, 2, _alone(cues, k, rules)))
        if k + 1 < len(cues) and cues[k + 1].start - cue.end < gap - tol:
            found.append(Violation(k, "min_gap", cues[k + 1].start - cue.end, gap))
    return found


def _spoken(cue: Cue) -> tuple[float, float]:
    """When the cue's words are spoken, or its own span when it has no word times."""
    return (cue.words[0].start, cue.words[-1].end) if cue.words else (cue.start, cue.end)


def _alone(cues: Sequence[Cue], k: int, rules: CueRules) -> str:
    """Why cue `k`, a single word, could not share a cue with a neighbour, or "" if it could."""
    if all(_apart(cues, *sorted((k, other)), rules) for other in (k - 1, k + 1)):
        return "no neighbour could take it"
    return ""


def _apart(cues: Sequence[Cue], a: int, b: int, rules: CueRules) -> bool:
    """Must cues `a` and `b` (next to each other) stay apart: one of them does not exist, a
    sentence ends or a pause the builder reads as a boundary lies between them, or together
    they would last longer than max_duration or need more than max_lines lines?"""
    if a < 0 or b >= len(cues) or _sentence_end(cues[a].lines[-1]):
        return True
    (start, end), (next_start, next_end) = _spoken(cues[a]), _spoken(cues[b])
    if next_start - end >= _PAUSE or next_end - start > rules.max_duration:
        return True
    chunks = [_Chunk(piece, 0.0, 0.0, (), False) for piece in _split_text(" ".join(cues[a].lines + cues[b].lines))]
    return _greedy_lines(chunks, 0, len(chunks), rules.max_line_width) > rules.max_lines


# --- the per-file report --------------------------------------------------------------------

# rule: (one, many, worst), in the order the summary lists them; "split_word" is the report's own
_PHRASES = {
    "max_cps": ("cue over {limit:g} cps", "cues over {limit:g} cps", "worst {worst:.1f}"),
    "one_word": ("one-word cue", "one-word cues", ""),
    "min_duration": ("cue under {limit:.2f} s", "cues under {limit:.2f} s", "shortest {worst:.2f} s"),
    "max_duration": ("cue over {limit:g} s", "cues over {limit:g} s", "longest {worst:.2f} s"),
    "max_lines": ("cue over {limit:g} lines", "cues over {limit:g} lines", "most {worst:g}"),
    "max_line_width": ("cue wider than {limit:g} columns", "cues wider than {limit:g} columns", "widest {worst:g}"),
    "min_gap": ("gap under {limit:.2f} s", "gaps under {limit:.2f} s", "shortest {worst:.2f} s"),
    "split_word": (
        "word over {limit:g} s split by time",
        "words over {limit:g} s split by time",
        "longest {worst:.1f} s",
    ),
}


@dataclass(frozen=True)
class RuleReport:
    """One rule's exceptions in one file: how many, the worst value against the limit (the
    lowest for min_* rules; None for one-word cues, which have no measure), and where."""

    rule: str  # a `Violation.rule`, or "split_word": a word shown in several cues
    count: int
    worst: float | None
    limit: float
    at: tuple[float, ...]  # start of each cue concerned, seconds

    def phrase(self) -> str:
        """The count and what it counts, e.g. "3 cues over 20 cps (worst 24.1)"."""
        one, many, worst = _PHRASES[self.rule]
        text = f"{self.count} {(one if self.count == 1 else many).format(limit=self.limit)}"
        return f"{text} ({worst.format(worst=self.worst)})" if worst else text

    def to_dict(self) -> dict[str, object]:
        worst = None if self.worst is None else round(self.worst, 3)
        return {"count": self.count, "worst": worst, "limit": self.limit, "at": [round(t, 3) for t in self.at]}


@dataclass(frozen=True)
class CueReport:
    """What one file's cues could not keep to: for the CLI summary and `--report` JSON, so a
    reading-speed exception or a one-word cue is reported, never silently accepted."""

    cues: int
    exceptions: tuple[RuleReport, ...]  # only rules with exceptions, in summary order

    def summary(self) -> str:
        """One line, e.g. "3 cues over 20 cps (worst 24.1), 1 one-word cue"; empty when none."""
        return ", ".join(e.phrase() for e in self.exceptions)

    def to_dict(self) -> dict[str, object]:
        return {"cues": self.cues, "exceptions": {e.rule: e.to_dict() for e in self.exceptions}}


def report_cues(cues: Sequence[Cue], rules: CueRules, media_end: float | None = None) -> CueReport:
    """The exceptions `check_cues` finds in `cues` (pass the media's duration as `media_end`),
    per rule, and the words held so long they were split by time."""
    found: dict[str, list[tuple[int, float]]] = {}
    limits = {"split_word": rules.max_duration}
    for v in check_cues(cues, rules, media_end):
        found.setdefault(v.rule, []).append((v.index, v.value))
        limits[v.rule] = v.limit
    for k, cue in enumerate(cues):
        if not cue.continued and k + 1 < len(cues) and cues[k + 1].continued:
            last = next((j for j in range(k + 1, len(cues)) if not cues[j].continued), len(cues)) - 1
            found.setdefault("split_word", []).append((k, cues[last].end - cue.start))
    exceptions = []
    for rule in filter(found.__contains__, _PHRASES):
        values = [value for _, value in found[rule]]
        worst = None if rule == "one_word" else min(values) if rule.startswith("min_") else max(values)
        exceptions.append(
            RuleReport(rule, len(values), worst, limits[rule], tuple(cues[k].start for k, _ in found[rule]))
        )
    return CueReport(len(cues), tuple(exceptions))
