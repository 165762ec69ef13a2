"""Chinese numerals: the cardinal parser and the written forms the ITN rules produce."""

from __future__ import annotations

from decimal import Decimal

DIGIT = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
SPELLED = {**{k: v for k, v in DIGIT.items() if k != "两"}, "幺": 1}  # digit-by-digit readings
SMALL = {"十": 10, "百": 100, "千": 1000}
LARGE = {"万": 10**4, "亿": 10**8}

NUM_CHARS = "零〇一二两三四五六七八九十百千万亿"


def cardinal(text: str) -> int | None:
    """The value of a Chinese cardinal (一千二百三十四, 两万三千, 一万二 = 12000), or None
    when ``text`` is not one well-formed number."""
    if not text or any(c not in NUM_CHARS for c in text):
        return None
    total = 0  # whole 亿 sections
    section = 0  # whole 万 groups below the current 亿
    group = 0  # below 万
    digit: int | None = None
    last_small = 10**5  # magnitudes inside a group must fall
    last_large = 10**13
    previous_magnitude = 0  # the magnitude just before a trailing digit, for elision
    zero_seen = False
    for ch in text:
        if ch in DIGIT:
            if digit is not None and digit != 0:
                return None  # two digits in a row: a digit-by-digit reading, not a cardinal
            if DIGIT[ch] == 0:
                zero_seen = True
            digit = DIGIT[ch]
            continue
        if ch in SMALL:
            value = SMALL[ch]
            if value >= last_small:
                return None
            if digit == 0 and ch != "十":
                return None  # 〇百 is no number
            if digit is None or (digit == 0 and ch == "十"):
                if ch != "十" or (digit is None and (group or section or total)):
                    return None  # 百 with no digit before it, or 一百十
                digit = 1  # 十五 = 15, 一千零十 = 1010
            group += digit * value
            last_small, previous_magnitude = value, value
            digit, zero_seen = None, False
            continue
        value = LARGE[ch]
        if value >= last_large:
            return None
        if digit == 0:
            return None
        group += digit or 0
        if group == 0 and section == 0:
            return None
        if value == LARGE["万"]:
            section = (section + group) * value
        else:
            total = (total + section + group) * value
            section = 0
        group, digit = 0, None
        last_small, last_large, previous_magnitude = 10**5, value, value
        zero_seen = False
    if digit is not None:
        if previous_magnitude >= 100 and not zero_seen and text[-2] not in DIGIT:
            digit *= previous_magnitude // 10  # colloquial elision: 三千五 = 3500
        group += digit
    return total + section + group


def has_magnitude(text: str) -> bool:
    return any(c in SMALL or c in LARGE for c in text)


def spelled(text: str) -> str:
    return "".join(str(SPELLED[c]) for c in text)


def write_number(value: int) -> str:
    """Digits; from 亿 up, digits + 亿 with an exact decimal (3.5亿)."""
    if value >= LARGE["亿"]:
        scaled = Decimal(value) / LARGE["亿"]
        return f"{scaled.normalize():f}亿"
    return str(value)


def number_with_decimal(text: str) -> str | None:
    """``NUM`` or ``NUM点DDD`` written as digits; None when it does not parse."""
    whole, _, fraction = text.partition("点")
    value = cardinal(whole)
    if value is None:
        return None
    if fraction:
        return f"{value}.{spelled(fraction)}"
    return write_number(value)
