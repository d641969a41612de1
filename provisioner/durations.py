"""How long something took or lasted, for people: one way, in every message of the lab."""

from __future__ import annotations


def human_duration(seconds: float) -> str:
    """'40 s', '45 min', '2 h 5 min', '3 d 2 h': how long, for people."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
