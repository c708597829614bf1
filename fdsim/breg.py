"""Bareos's where-regexps: a restore's ``regexwhere=`` and the ``strip_prefix=``/``add_prefix=``/
``add_suffix=`` the director turns into one (Bareos 25.1 ``core/src/lib/breg.cc``).

The director (dird ``ua_restore.cc`` RestoreCmd) builds ``regexwhere`` from the three prefixes with
:func:`build_where` and sends the fd ``restore ... regexwhere=<expr>`` instead of ``where=``.  The fd
(filed ``dir_cmd.cc`` RestoreCmd) compiles it with ``get_bregexps`` - a ``Bad where regexp`` fatal
error when nothing compiles - and leaves ``jcr->where`` NULL; ``lib/attr.cc`` BuildAttrOutputFnames
then applies every expression in turn to each file name (:func:`apply_bregexps`).

An expression is ``<sep>pattern<sep>replacement<sep>[options]``, several separated by ``,``
(``!^@hyperv!/x/@hyperv!,!a!b!i``).  ``sep`` is one of ``!:;|,&%=~/#``; options ``i`` (ignore case)
and ``g`` (accepted, no effect: only the first match is replaced); ``$N``/``\\N`` in the replacement
is group N.  The parser below follows ``BareosRegex::ExtractRegexp`` character by character,
including how it treats ``\\<sep>`` and ``\\\\``.  Patterns are POSIX extended regular expressions,
run here with Python's ``re``: the same for anchors, classes, groups and alternation as used in
restores; POSIX bracket classes (``[[:alpha:]]``) and leftmost-longest alternation are not emulated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

SEPARATORS = "!:;|,&%=~/#"
_NUL = "\0"


@dataclass(frozen=True)
class BRegexp:
    """One compiled ``<sep>pattern<sep>replacement<sep>`` expression."""

    expr: str
    subst: str
    pattern: re.Pattern[str]

    def replace(self, fname: str) -> Tuple[str, bool]:
        """``BareosRegex::replace``: the name with the first match replaced, and whether it matched."""
        match = self.pattern.search(fname)
        if match is None:
            return fname, False
        out: List[str] = []
        i = 0
        subst = self.subst
        while i < len(subst):
            ch = subst[i]
            nxt = subst[i + 1] if i + 1 < len(subst) else ""
            if ch in "$\\" and nxt.isdigit() and nxt.isascii():
                no = int(nxt)
                if no <= self.pattern.groups and match.start(no) >= 0:
                    out.append(match.group(no))
                i += 2
                continue
            out.append(ch)
            i += 1
        return fname[:match.start()] + "".join(out) + fname[match.end():], True


def _extract(motif: str, pos: int) -> Optional[Tuple[BRegexp, int]]:
    """``BareosRegex::ExtractRegexp`` from ``motif[pos:]``: the expression and where the next starts."""
    n = len(motif)

    def at(k: int) -> str:
        return motif[k] if k < n else _NUL

    sep = at(pos)
    if sep == _NUL or sep not in SEPARATORS:
        return None
    i = pos + 1
    dest: List[str] = []
    subst_at: Optional[int] = None
    ok = False
    while at(i) != _NUL and not ok:
        c = at(i)
        if c == "\\" and at(i + 1) in (sep, "\\"):
            i += 1  # *dest++ = *++search: the escaped character is copied and looked at again
            dest.append(at(i))
        elif c == sep:  # end of a part
            dest.append(_NUL)
            if subst_at is not None:
                ok = True
            else:
                i += 1
                dest.append(at(i))
                subst_at = len(dest)
        else:
            dest.append(c)
            i += 1
    if not ok or subst_at is None:
        return None
    flags = re.MULTILINE  # REG_EXTENDED | REG_NEWLINE
    ok = False
    while at(i) != _NUL and not ok:
        c = at(i)
        if c == "i":
            flags |= re.IGNORECASE
        elif c in ("g", sep):
            pass
        else:
            ok = True  # end of the options: this character (a ',') is skipped
        i += 1
    text = "".join(dest)
    expr = text.split(_NUL, 1)[0]
    subst = text[subst_at:].split(_NUL, 1)[0]
    try:
        pattern = re.compile(expr, flags)
    except re.error:
        return None
    return BRegexp(expr, subst, pattern), i


def parse_bregexps(where: str) -> Optional[List[BRegexp]]:
    """``get_bregexps``: every expression of a regexwhere, or None when the first does not compile."""
    out: List[BRegexp] = []
    pos = 0
    while True:
        found = _extract(where, pos)
        if found is None:
            break
        reg, pos = found
        out.append(reg)
    return out or None


def apply_bregexps(fname: str, bregexps: Sequence[BRegexp]) -> str:
    """``ApplyBregexps``: each expression on the result of the one before."""
    for reg in bregexps:
        fname, _ = reg.replace(fname)
    return fname


def escape(src: str, sep: str = "!") -> str:
    """``bregexp_escape_string``: a backslash before ``sep`` and before ``\\``."""
    return "".join("\\" + ch if ch in (sep, "\\") else ch for ch in src)


def build_where(strip_prefix: Optional[str] = None, add_prefix: Optional[str] = None,
                add_suffix: Optional[str] = None) -> str:
    """``bregexp_build_where``: ``!<strip>!!i``, ``!([^/])$!$1<suffix>!``, ``!^!<prefix>!``, in that order.

    ``strip_prefix`` is a regular expression, not anchored, matched ignoring case.
    """
    parts: List[str] = []
    if strip_prefix is not None:
        parts.append(f"!{escape(strip_prefix)}!!i")
    if add_suffix is not None:
        parts.append(f"!([^/])$!$1{escape(add_suffix)}!")
    if add_prefix is not None:
        parts.append(f"!^!{escape(add_prefix)}!")
    return ",".join(parts)
