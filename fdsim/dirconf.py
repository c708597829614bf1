"""What the director makes of plugin strings before the fd sees them (reference §1.1, §12).

Two parsers stand between what an administrator writes and what reaches the fd:

- ``bareos-dir.conf``: a FileSet's ``Plugin = "..."`` is read by the configuration lexer,
  ``lib/lex.cc`` ``LexGetToken``.  Inside a quoted string a backslash escapes the next character and
  is dropped (``\\:`` arrives as ``:``, ``\\\\`` as ``\\``, ``C:\\VMs`` as ``C:VMs``); a line break
  inside the quotes is dropped; a closing quote followed, on the same line or at the start of the
  next one, by another quote continues the string (``"python3" ":a=b"`` is ``python3:a=b``).
  Outside quotes ``#`` starts a comment.  An unquoted value ends at ``=``, ``#``, ``,``, ``;`` or a
  blank (``lex_string``), so a plugin string must be quoted.
- bconsole commands (``restore ... pluginoptions="..."``, ``run ... pluginoptions=...``): the
  director splits them with ``lib/scan.cc`` ``next_arg``/``ParseArgs``: a backslash anywhere escapes
  the next character and is dropped, double quotes group and are removed, a blank ends an
  argument, and ``key=value`` splits at the first ``=``.

:func:`fileset_plugin_strings` and :func:`bconsole_args` apply these rules, so tests can start from
the text an administrator writes, e.g. ``FdSim.backup(fileset_plugin_strings(conf))``.

Not modelled: ``@`` includes, ``|program`` and ``<file`` plugin lines (dird ``fd_sendfileset.cc``),
Options-block plugins (``Options { Plugin = ... }``, which fdsim does not run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

__all__ = ["ConfigSyntaxError", "bconsole_args", "bconsole_pluginoptions", "fileset_plugin_strings",
           "lex_quoted"]


class ConfigSyntaxError(ValueError):
    """Text the director would refuse or misread (the message says what it would do)."""


def _next_line_continues(lines: List[str], line_no: int) -> bool:
    """lex.cc NextLineContinuesWithQuotes: the next line's first non-blank character is a quote."""
    if line_no + 1 >= len(lines):
        return False
    stripped = lines[line_no + 1].lstrip(" \t")
    return stripped.startswith('"')


def _current_line_continues(line: str, col: int) -> bool:
    """lex.cc CurrentLineContinuesWithQuotes: after the closing quote, only blanks, then a quote."""
    return line[col:].lstrip(" \t").startswith('"')


@dataclass
class _Pos:
    line: int
    col: int


def lex_quoted(lines: List[str], pos: _Pos) -> str:
    """The value of the quoted string whose opening quote is at ``pos`` (lex.cc ``lex_quoted_string``);
    ``pos`` is left just after the closing quote of the last continued piece."""
    out: List[str] = []
    if lines[pos.line][pos.col] != '"':
        raise ConfigSyntaxError("lex_quoted must start at a double quote")
    pos.col += 1
    esc_next = False
    while True:
        if pos.line >= len(lines):
            raise ConfigSyntaxError("end of file inside a quoted string (a double quote is missing)")
        line = lines[pos.line]
        if pos.col >= len(line):  # L_EOL: the line break is dropped, an escape does not carry over
            esc_next = False
            pos.line += 1
            pos.col = 0
            continue
        ch = line[pos.col]
        pos.col += 1
        if esc_next:
            out.append(ch)
            esc_next = False
        elif ch == "\\":
            esc_next = True
        elif ch == '"':
            if _next_line_continues(lines, pos.line):
                pos.line += 1
                pos.col = len(lines[pos.line]) - len(lines[pos.line].lstrip(" \t")) + 1
            elif _current_line_continues(line, pos.col):
                pos.col += len(line[pos.col:]) - len(line[pos.col:].lstrip(" \t")) + 1
            else:
                return "".join(out)
        else:
            out.append(ch)


def _skip_blanks_and_comments(lines: List[str], pos: _Pos) -> Optional[str]:
    """The next significant character (None at the end), skipping blanks, line breaks and # comments."""
    while pos.line < len(lines):
        line = lines[pos.line]
        while pos.col < len(line) and line[pos.col] in " \t\r\n":
            pos.col += 1
        if pos.col >= len(line) or line[pos.col] == "#":
            pos.line += 1
            pos.col = 0
            continue
        return line[pos.col]
    return None


def fileset_plugin_strings(conf: str) -> List[str]:
    """Every ``Plugin = "..."`` of a director configuration text, as the fd receives it.

    Keywords are matched as the lexer's ``lex_identifier`` reads them: letters only, blanks inside
    ignored, case-insensitive.  ``Plugin`` inside an ``Options { }`` block is an Options plugin,
    which fdsim does not run: it is refused.
    """
    lines = conf.split("\n")
    pos = _Pos(0, 0)
    found: List[str] = []
    depth: List[str] = []  # resource/block names, to notice Options { Plugin = ... }
    last_word = ""
    while True:
        ch = _skip_blanks_and_comments(lines, pos)
        if ch is None:
            return found
        line = lines[pos.line]
        if ch == "{":
            depth.append(last_word)
            pos.col += 1
            continue
        if ch == "}":
            if depth:
                depth.pop()
            pos.col += 1
            continue
        if ch == '"':
            lex_quoted(lines, pos)
            continue
        if ch.isalpha():
            start = pos.col
            while pos.col < len(line) and (line[pos.col].isalpha() or line[pos.col] in " \t"):
                pos.col += 1
            word = line[start:pos.col].replace(" ", "").replace("\t", "").lower()
            if pos.col < len(line) and line[pos.col] not in "={}#;,\"" and not line[pos.col].isspace():
                while pos.col < len(line) and line[pos.col] not in "={}#;, \t":  # an unquoted string
                    pos.col += 1
                last_word = ""
                continue
            last_word = word
            if word == "plugin":
                found.append(_plugin_value(lines, pos, depth))
            continue
        pos.col += 1  # '=', ',', ';' and the characters of unquoted values


def _plugin_value(lines: List[str], pos: _Pos, depth: List[str]) -> str:
    ch = _skip_blanks_and_comments(lines, pos)
    if ch != "=":
        raise ConfigSyntaxError(f"line {pos.line + 1}: 'Plugin' must be followed by '='")
    pos.col += 1
    ch = _skip_blanks_and_comments(lines, pos)
    if ch != '"':
        line = lines[pos.line]
        end = pos.col
        while end < len(line) and line[end] not in "={}#;, \t\r":
            end += 1
        raise ConfigSyntaxError(
            f"line {pos.line + 1}: unquoted Plugin value: the director's lexer (lib/lex.cc lex_string) "
            f"ends it at '=', so it would read {line[pos.col:end]!r}; put the plugin string in double quotes")
    if depth and depth[-1] == "options":
        raise ConfigSyntaxError(f"line {pos.line + 1}: Options {{ Plugin = ... }} is an Options-block plugin, "
                                "which fdsim does not run")
    value = lex_quoted(lines, pos)
    if value[:1] in ("|", "<"):
        raise ConfigSyntaxError(f"line {pos.line + 1}: Plugin = \"{value[:1]}...\" (a program or a file of "
                                "plugin lines, dird fd_sendfileset.cc) is not modelled by fdsim")
    return value


def _next_arg(text: str, start: int) -> Tuple[str, int]:
    """lib/scan.cc next_arg: one argument and where the next one starts."""
    i = start
    while i < len(text) and text[i].isspace():
        i += 1
    out: List[str] = []
    in_quote = False
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 1
            if i < len(text):
                out.append(text[i])
                i += 1
            continue
        if ch == '"':
            in_quote = not in_quote
            i += 1
            continue
        if not in_quote and ch.isspace():
            i += 1
            break
        out.append(ch)
        i += 1
    return "".join(out), i


def bconsole_args(command: str) -> List[Tuple[str, Optional[str]]]:
    """A bconsole command line as the director's ParseArgs (lib/scan.cc) splits it:
    ``(keyword, value)`` pairs, value None for a bare word; keywords split at the first ``=``."""
    text = command.rstrip("\n\r ")
    out: List[Tuple[str, Optional[str]]] = []
    i = 0
    while True:
        arg, i = _next_arg(text, i)
        if not arg:
            return out
        key, eq, value = arg.partition("=")
        out.append((key, value if eq else None))


def bconsole_pluginoptions(command: str) -> str:
    """The ``pluginoptions=`` value of a bconsole ``run``/``restore`` command, as the fd receives it."""
    values = [v for k, v in bconsole_args(command) if k.lower() == "pluginoptions" and v is not None]
    if len(values) != 1:
        raise ConfigSyntaxError(f"expected one pluginoptions= in {command!r}, found {len(values)}")
    return values[0]
