"""Chinese inverse text normalization, to the conventions in docs/itn.md.

Ordered regex passes over the sentence; each pass converts a pattern (percent, fraction,
date, time, money, ...) and declines, leaving the text as it was, whenever a check fails.
Two guards hold in every pass:

- protected words (idioms and fixed words such as 一心一意, 十分感谢, 万一) are never touched;
- a numeral run touching an Arabic digit, '.' or ':' is left alone, so written text and the
  output of an earlier pass never change again (the stage is idempotent).

No library follows these conventions (wetext writes 2025/10/05 and 380块钱, cn2an converts
single digits before classifiers), so the rules are ours; the number parser is small.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable

from pipeline.text.zh_numbers import (
    DIGIT,
    NUM_CHARS,
    SPELLED,
    cardinal,
    has_magnitude,
    number_with_decimal,
    spelled,
    write_number,
)

NUM = f"[{NUM_CHARS}]+"
SPELL = "[零〇一二三四五六七八九幺]"
# A number with an optional digit-by-digit fraction after 点.
NUM_DEC = f"{NUM}(?:点{SPELL}+)?"

TIME_OF_DAY = "早上|早晨|上午|中午|下午|傍晚|晚上|夜里|半夜|凌晨"
CLASSIFIERS = "集名章节页届次个位条期季层号回轮批场段部本张篇款项代级年月周天课遍杯届人"
UNITS = (
    "摄氏度|华氏度|平方米|平方公里|立方米|公斤|千克|公里|千米|厘米|毫米|毫升|分钟|小时|"
    "美元|欧元|英镑|日元|港元|港币|韩元|人民币|克|斤|吨|米|度|岁|秒|元|升"
)

# Idioms and fixed words with numeral characters. A lookbehind keeps the words that can also
# be the tail of a number (三万一千, 三亿五千万) convertible there.
_NOT_AFTER_NUMBER = f"(?<![{NUM_CHARS}])"
_PROTECTED_WORDS = (
    "一心一意 三心二意 一模一样 五花八门 七上八下 四面八方 乱七八糟 十全十美 一五一十 三三两两 "
    "接二连三 一干二净 一清二楚 独一无二 千千万万 千方百计 百发百中 万无一失 九牛一毛 八九不离十 "
    "三十而立 一石二鸟 一举两得 一言为定 十万火急 不管三七二十一 三长两短 一知半解 五颜六色 "
    "七嘴八舌 一毛不拔 一点儿 一点点 一会儿 一下子 一些 一样 统一 一直 唯一 一起 一般 一定 一下 一切 一共 "
    "一边 一旦 一致 一向 一再 一同 一律 一番 一半 一生 一路 一面 一方面 一阵 一味 一贯 一早 "
    "二手 三明治 十足 百姓 百货 千万 万一 星期一 星期二 星期三 星期四 星期五 星期六 星期天 星期日 "
    "礼拜一 礼拜二 礼拜三 礼拜四 礼拜五 礼拜六 礼拜天 周一 周二 周三 周四 周五 周六 周日"
).split()
_PROTECTED = re.compile(
    "|".join(
        [
            f"{_NOT_AFTER_NUMBER}十分(?![钟之])",
            f"{_NOT_AFTER_NUMBER}一点(?!{SPELL})",
            f"{_NOT_AFTER_NUMBER}(?<!零下)一度",
        ]
        + [
            f"{_NOT_AFTER_NUMBER}{re.escape(w)}" if w[0] in NUM_CHARS else re.escape(w)
            for w in sorted(_PROTECTED_WORDS, key=len, reverse=True)
        ]
    )
)
# A numeral run touching one of these is already (partly) written form: leave it.
_WRITTEN_BEFORE = "0123456789.:．"
_NUMERAL = NUM_CHARS + "幺"


Replace = Callable[[re.Match[str]], str | None]


class _Pass:
    """One rule: a pattern and a function giving the written form, or None to decline."""

    def __init__(self, pattern: str, replace: Replace, needs: str = "") -> None:
        self.pattern = re.compile(pattern)
        self.replace = replace
        self.needs = needs  # the rule cannot match without one of these characters

    def apply(self, text: str, lo: int = 0, hi: int | None = None) -> str:
        """``lo``/``hi``: matches reaching outside them are declined (guards, see zh_itn)."""
        if self.needs and not any(c in text for c in self.needs):
            return text
        hi = len(text) if hi is None else hi
        protected: list[tuple[int, int]] = []
        starts: list[int] = []

        def substitute(match: re.Match[str]) -> str:
            if not starts and not protected:
                # Found once, at the first match. Sorted and disjoint: bisect keeps a
                # 100 000-character line linear, not quadratic.
                protected.extend(m.span() for m in _PROTECTED.finditer(text))
                starts.extend(s for s, _ in protected)
                protected.append((len(text) + 1, len(text) + 1))  # a sentinel: found, even if none
                starts.append(len(text) + 1)
            start, end = match.span()
            if start < lo or end > hi:
                return match.group(0)
            last = bisect.bisect_left(starts, end) - 1
            if last >= 0 and protected[last][1] > start:
                return match.group(0)
            before = text[start - 1] if start else ""
            after = text[end] if end < len(text) else ""
            if before and (before in _WRITTEN_BEFORE or before in _NUMERAL):
                return match.group(0)  # touches written form, or starts inside a numeral run
            if after and (after in "0123456789" or (after in _NUMERAL and match.group(0)[-1] in _NUMERAL)):
                return match.group(0)  # ends inside a numeral run
            if before == "点" and text[start - 2 : start - 1].isdigit():
                return match.group(0)  # 3点五: half written already
            if after == "点" and text[end + 1 : end + 2].isdigit():
                return match.group(0)  # 三点5: half written already
            out = self.replace(match)
            return match.group(0) if out is None else out

        return self.pattern.sub(substitute, text)


def _percent(m: re.Match[str]) -> str | None:
    number = m.group(2)
    if number[0] in "百千":
        number = "一" + number  # 百分之百
    written = number_with_decimal(number)
    return None if written is None else written + ("%" if m.group(1) == "百" else "‰")


def _fraction(m: re.Match[str]) -> str | None:
    denominator, numerator = cardinal(m.group(1)), number_with_decimal(m.group(2))
    if denominator is None or numerator is None or denominator == 0:
        return None
    return f"{numerator}/{denominator}"


def _year(m: re.Match[str]) -> str:
    return spelled(m.group(1)) + "年"


def _month_day(m: re.Match[str]) -> str | None:
    month, day = cardinal(m.group(1)), cardinal(m.group(2))
    if month is None or day is None or not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    return f"{month}月{day}日"


def _month_after_year(m: re.Match[str]) -> str | None:
    month = cardinal(m.group(2))
    return None if month is None or not 1 <= month <= 12 else f"{m.group(1)}{month}月"


def _clock(m: re.Match[str]) -> str | None:
    hour = cardinal(m.group("h"))
    if hour is None or hour > 24:
        return None
    if m.group("half"):
        minute = 30
    elif m.group("quarter"):
        minute = 15 if m.group("quarter") == "一刻" else 45
    else:
        minute_value = cardinal(m.group("m").removeprefix("零") or "零")
        if minute_value is None or minute_value >= 60:
            return None
        minute = minute_value
    out = f"{m.group('tod') or ''}{hour}:{minute:02d}"
    if m.group("s"):
        second = cardinal(m.group("s"))
        if second is None or second >= 60:
            return None
        out += f":{second:02d}"
    return out


def _hour(m: re.Match[str]) -> str | None:
    hour = cardinal(m.group("h"))
    if hour is None or hour > 24:
        return None
    tail = "整" if m.group("tail") == "整" else ""
    return f"{m.group('tod') or ''}{hour}点{tail}"


def _money(m: re.Match[str]) -> str | None:
    written = number_with_decimal(m.group(1))
    return None if written is None else f"{written}元"


def _money_jiao(m: re.Match[str]) -> str | None:
    written = number_with_decimal(m.group(1))
    return None if written is None or "." in written else f"{written}.{DIGIT[m.group(2)]}元"


def _jiao(m: re.Match[str]) -> str | None:
    value = cardinal(m.group(1))
    return None if value is None or not 1 <= value <= 9 else f"0.{value}元"


def _colloquial_decimal(m: re.Match[str]) -> str | None:
    # 三十七度五 = 37.5度, 一米七五 = 1.75米: the unit said between the whole and the fraction.
    value = cardinal(m.group(1))
    return None if value is None else f"{value}.{spelled(m.group(3))}{m.group(2)}"


def _decimal(m: re.Match[str]) -> str | None:
    return number_with_decimal(m.group(0))


def _ordinal(m: re.Match[str]) -> str | None:
    value = cardinal(m.group(1))
    return None if value is None else f"第{value}"


def _negative(m: re.Match[str]) -> str | None:
    written = number_with_decimal(m.group(1))
    return None if written is None else f"-{written}"


def _with_unit(m: re.Match[str]) -> str | None:
    return number_with_decimal(m.group(1))


def _range(m: re.Match[str]) -> str | None:
    # A takes the treatment B gets: both become digits when B has a magnitude (>= 10) or a unit.
    low, high = number_with_decimal(m.group(1)), number_with_decimal(m.group(3))
    if low is None or high is None:
        return None
    if not (has_magnitude(m.group(3)) or m.group(4)):
        return None
    return f"{low}{m.group(2)}{high}{m.group(4) or ''}"


def _spelled_run(m: re.Match[str]) -> str:
    return spelled(m.group(0))


def _cardinal(m: re.Match[str]) -> str | None:
    text = m.group(0)
    if not has_magnitude(text):
        return None  # single digits stay words; digit runs have their own rule
    before = m.string[m.start() - 1] if m.start() else ""
    after = m.string[m.end() : m.end() + 1]  # one character: copying the rest is quadratic
    if before in ("第", "几", "数") or after in ("几", "来"):
        return None  # 第二十 without a classifier, 几十, 十几, 二十来个: approximate or ordinal
    if text == "十" and not _BARE_TEN_NEXT.match(m.string, m.end()):
        return None  # a lone 十 starts many words (十足, 十字); only before a classifier or unit
    value = cardinal(text)
    return None if value is None else write_number(value)


_BARE_TEN_NEXT = re.compile(f"[{CLASSIFIERS}日号]|{UNITS}|[，。、！？；：,.!?;:\\s]|$")
_PAUSE = "[，。、！？；：,.!?;:\\s]"

_PASSES = [
    _Pass(f"([百千])分之({NUM_DEC})", _percent, "分"),
    _Pass(f"({NUM})分之({NUM_DEC})", _fraction, "分"),
    _Pass(f"({SPELL}{{2,4}})年", _year, "年"),
    _Pass(f"({NUM})月({NUM})[号日]", _month_day, "月"),
    _Pass(f"([0-9]{{2,4}}年)({NUM})月", _month_after_year, "月"),
    _Pass(
        f"(?P<tod>{TIME_OF_DAY})?(?P<h>{NUM})点"
        f"(?:(?P<half>半)|(?P<quarter>[一三]刻)|(?P<m>{NUM})分(?:(?P<s>{NUM})秒)?)",
        _clock,
        "点",
    ),
    _Pass(f"(?P<tod>{TIME_OF_DAY})(?P<h>{NUM})点(?P<tail>钟|整)?(?!{SPELL})", _hour, "点"),
    _Pass(f"(?P<tod>)(?P<h>{NUM})点(?P<tail>钟|整)", _hour, "点"),
    _Pass(f"负({NUM_DEC})", _negative, "负"),
    _Pass(f"({NUM_DEC})块(?:钱|(?={_PAUSE}|$))", _money, "块"),
    _Pass(f"({NUM_DEC})块([一二两三四五六七八九])(?:毛钱?)?(?![{NUM_CHARS}])", _money_jiao, "块"),
    _Pass(f"([一二两三四五六七八九])毛(?:钱|(?={_PAUSE}|$))", _jiao, "毛"),
    _Pass(f"({NUM})(度|米)({SPELL}{{1,2}})(?![{NUM_CHARS}点])", _colloquial_decimal, "度米"),
    _Pass(f"({NUM})点({SPELL}+)", _decimal, "点"),
    _Pass(f"第({NUM})(?=[{CLASSIFIERS}])", _ordinal, "第"),
    _Pass(f"({NUM_DEC})(到|至)({NUM_DEC})({UNITS})?", _range, "到至"),
    _Pass(f"({NUM_DEC})(?={UNITS})", _with_unit),
    _Pass(f"{SPELL}{{3,}}", _spelled_run),
    _Pass(NUM, _cardinal),
]


def zh_itn(text: str) -> str:
    """Spoken-form numbers in Chinese text to written form; everything else unchanged."""
    if not any(c in NUM_CHARS or c == "幺" for c in text):
        return text  # the common case (Whisper writes digits): nothing to do
    if _LONG_RUN.search(text) is None:
        return _rules(text)
    # A rule tried at each start inside a numeral run scans to the run's end: quadratic in
    # its length. So the pieces between runs longer than any spoken number go through the
    # rules one by one, each with a numeral on the sides that stand for the run (no match
    # may touch a guard: exactly as no match may start inside, or end inside, a run).
    out: list[str] = []
    last = 0
    for run in _LONG_RUN.finditer(text):
        out.append(_guarded(text[last : run.start()], left=last > 0, right=True))
        out.append(_long_run(text, run))
        last = run.end()
    out.append(_guarded(text[last:], left=True, right=False))
    return "".join(out)


# No spoken number is this long (the longest well-formed cardinal is about 30 characters).
LONG_RUN = 64
_LONG_RUN = re.compile(f"[{_NUMERAL}]{{{LONG_RUN + 1},}}")
_GUARD = "九"


def _rules(text: str, lo: int = 0, right_guard: int = 0) -> str:
    # A rule declines next to a numeral that a later rule may turn into digits, so run the
    # rules again until nothing changes: that makes the result stable (idempotent).
    for _ in range(4):
        before = text
        for rule in _PASSES:
            text = rule.apply(text, lo, len(text) - right_guard)
        if text == before:
            break
    return text


def _guarded(piece: str, left: bool, right: bool) -> str:
    if not piece:
        return piece
    left_guard, right_guard = _GUARD if left else "", _GUARD if right else ""
    done = _rules(left_guard + piece + right_guard, len(left_guard), len(right_guard))
    return done[len(left_guard) : len(done) - len(right_guard)]


def _long_run(text: str, run: re.Match[str]) -> str:
    """Digit by digit when it is all digits and touches no written form (as a shorter run
    would be); with magnitudes in it, no number: as it is."""
    before = text[run.start() - 1] if run.start() else ""
    after = text[run.end()] if run.end() < len(text) else ""
    digits = all(c in SPELLED for c in run.group(0))
    if digits and before not in _WRITTEN_BEFORE and after not in "0123456789":
        return spelled(run.group(0))
    return run.group(0)
