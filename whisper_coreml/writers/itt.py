"""iTunes Timed Text (iTT): the caption file Final Cut Pro exports and imports (File > Import >
Captions), a TTML profile timed in SMPTE frames.

The layout follows the file Final Cut Pro itself writes (`../shared/fcpxml/samples/fcp_ac/
caption_korean.itt`): SMPTE time base at the project's frame rate (the 1000/1001 multiplier for
23.976/29.97/59.94, non-drop), the language, one bottom region, `<br/>` between lines. Cue
edges go through the same frame snapping as FCPXML, so both files agree frame for frame.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from whisper_coreml.result import TranscriptionResult
from whisper_coreml.subtitles import Cue
from whisper_coreml.timecode import FrameRate
from whisper_coreml.writers.base import WriteOptions, Writer
from whisper_coreml.writers.fcpxml import frame_spans

TT = "http://www.w3.org/ns/ttml"
TTP = "http://www.w3.org/ns/ttml#parameter"
TTS = "http://www.w3.org/ns/ttml#styling"
TTM = "http://www.w3.org/ns/ttml#metadata"
for _prefix, _uri in (("", TT), ("ttp", TTP), ("tts", TTS), ("ttm", TTM)):
    ET.register_namespace(_prefix, _uri)


def smpte(frames: int, rate: FrameRate) -> str:
    """Non-drop SMPTE timecode `HH:MM:SS:FF`, counting `rate.timebase` frames per second."""
    seconds, frame = divmod(frames, rate.timebase)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours:02d}:{minute:02d}:{second:02d}:{frame:02d}"


class ITTWriter(Writer):
    """iTT captions, frame-aligned on `options.rules.fps`."""

    extension = ".itt"

    def render(self, result: TranscriptionResult, cues: Sequence[Cue], options: WriteOptions) -> str:
        rate = options.rules.fps
        root = ET.Element(f"{{{TT}}}tt")
        root.set("{http://www.w3.org/XML/1998/namespace}lang", result.language or "en")
        root.set(f"{{{TTP}}}timeBase", "smpte")
        root.set(f"{{{TTP}}}frameRate", str(rate.timebase))
        if rate.ntsc:
            root.set(f"{{{TTP}}}frameRateMultiplier", "1000 1001")
        root.set(f"{{{TTP}}}dropMode", "nonDrop")
        head = ET.SubElement(root, f"{{{TT}}}head")
        styling = ET.SubElement(head, f"{{{TT}}}styling")
        ET.SubElement(
            styling,
            f"{{{TT}}}style",
            {
                "{http://www.w3.org/XML/1998/namespace}id": "normal",
                f"{{{TTS}}}color": "white",
                f"{{{TTS}}}fontFamily": "sansSerif",
                f"{{{TTS}}}fontSize": "100%",
                f"{{{TTS}}}fontStyle": "normal",
                f"{{{TTS}}}fontWeight": "normal",
            },
        )
        layout = ET.SubElement(head, f"{{{TT}}}layout")
        ET.SubElement(
            layout,
            f"{{{TT}}}region",
            {
                "{http://www.w3.org/XML/1998/namespace}id": "bottom",
                f"{{{TTS}}}displayAlign": "after",
                f"{{{TTS}}}extent": "100% 15%",
                f"{{{TTS}}}origin": "0% 85%",
                f"{{{TTS}}}writingMode": "lrtb",
            },
        )
        body = ET.SubElement(root, f"{{{TT}}}body", {"region": "bottom", "style": "normal", f"{{{TTS}}}color": "white"})
        div = ET.SubElement(body, f"{{{TT}}}div")
        for cue, (start, end) in zip(cues, frame_spans(cues, rate), strict=True):
            p = ET.SubElement(div, f"{{{TT}}}p", begin=smpte(start, rate), end=smpte(end, rate), region="bottom")
            p.text = cue.lines[0] if cue.lines else ""
            for line in cue.lines[1:]:
                ET.SubElement(p, f"{{{TT}}}br").tail = line
        ET.indent(root, space="  ")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
