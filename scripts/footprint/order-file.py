#!/usr/bin/env python3
"""Writes the edge agent's link order file from a callgrind profile (see scripts/footprint/profile-agent.sh).

    order-file.py [--script LINKER_SCRIPT] MAP CALLGRIND... > systemd/edge-agent.order

MAP is lld's link map (-Map) of the profiled binary, CALLGRIND its callgrind outputs (--dump-instr=yes,
--compress-strings=no, --compress-pos=no), most important first (start-up and idle, then forwarding). Every
input section of .text that executed at least one instruction is named by one symbol that only that section
defines, in the order the profiles first reach it; lld's --symbol-ordering-file then places those sections
at the start of .text, so the code the agent runs sits in a few pages instead of being spread over 21 MB.
Sections without a unique symbol (LLVM private functions, `.L...`) cannot be named in that list; with --script
they are listed by object file and section name in a linker script that puts them just before .text.
"""
import bisect
import re
import sys
from collections import Counter

args = sys.argv[1:]
script_path = None
if args[:1] == ["--script"]:
    script_path, args = args[1], args[2:]
map_path, profiles = args[0], args[1:]
if not profiles:
    sys.exit("usage: order-file.py MAP CALLGRIND...")

line_re = re.compile(r"\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+ (\s*)(.*)")
sections = []  # [address, size, name, [symbols]] of .text input sections
symbol_address = {}
output_section = None
for line in open(map_path):
    m = line_re.match(line)
    if not m:
        continue
    address, size, indent, rest = int(m.group(1), 16), int(m.group(2), 16), len(m.group(3)), m.group(4)
    if indent == 0:
        output_section = rest
    elif output_section not in (".text", ".text.hot"):  # .text.hot: the sections of a previous edge-agent.ld
        continue
    elif indent == 8:
        sections.append([address, size, rest, []])
    elif indent == 16 and sections:
        sections[-1][3].append(rest)
        symbol_address[rest] = address
if not sections:
    sys.exit(f"order-file: no .text input sections in {map_path} (not an lld -Map file?)")
sections.sort()
starts = [s[0] for s in sections]
defined = Counter(symbol for s in sections for symbol in s[3])

address_re = re.compile(r"^(0x[0-9a-f]+)\s")


def executed(path):
    """(function, instruction address) of every cost line of a callgrind file."""
    function = None
    for line in open(path):
        if line.startswith("fn="):
            function = line[3:].strip().split("'")[0]
        else:
            m = address_re.match(line)
            if m:
                yield function, int(m.group(1), 16)


# valgrind loads the position-independent binary at a base of its own: the most common difference between a
# function's first listed instruction and its address in the map.
deltas = Counter()
seen = set()
for function, address in executed(profiles[0]):
    if function not in seen and defined[function] == 1 and function in symbol_address:
        seen.add(function)
        deltas[address - symbol_address[function]] += 1
if not deltas:
    sys.exit("order-file: no function of the profile is in the map (mangled names? --demangle=no, --no-demangle)")
base, votes = deltas.most_common(1)[0]
print(f"order-file: load base {base:#x} ({votes} of {len(seen)} functions agree)", file=sys.stderr)

hot = {}  # section index -> first-seen rank
for path in profiles:
    for _, address in executed(path):
        last = address - base
        index = bisect.bisect_right(starts, last) - 1
        if index >= 0 and last < sections[index][0] + sections[index][1] and index not in hot:
            hot[index] = len(hot)

named = unnamed = 0
unnamed_bytes = 0
patterns = []
for index in sorted(hot, key=hot.get):
    unique = [symbol for symbol in sections[index][3] if defined[symbol] == 1]
    if unique:
        print(unique[0])
        named += 1
        continue
    unnamed += 1
    unnamed_bytes += sections[index][1]
    # /x/NIOCore.build/File.swift.o:(.text..L__unnamed_1) or /x/libswiftCore.a(Metadata.cpp.o):(.text.y)
    m = re.match(r"(.*/)?([^/]+\.build/[^/]+\.o|[^/(]+\.a\([^)]+\)):\((\.text\.[^)\s]+)\)$", sections[index][2])
    if m and not re.search(r"[*?\[\]\s]", m.group(3)):
        member = re.sub(r"\((.*)\)$", r":\1", m.group(2))  # archive(member) -> archive:member
        patterns.append(f"    *{member}({m.group(3)})")
if script_path:
    with open(script_path, "w") as script:
        script.write("/* Made by scripts/footprint/order-file.py: the functions the edge agent runs that have no symbol\n"
                     "   of their own (LLVM private functions), placed just before .text, next to the ordered ones. */\n"
                     "SECTIONS {\n  .text.hot : {\n" + "\n".join(patterns) + "\n  }\n} INSERT BEFORE .text;\n")
total = sum(sections[i][1] for i in hot)
print(f"order-file: {len(hot)} hot sections ({total / 1024:.0f} KiB); {named} named, {unnamed} without a unique "
      f"symbol ({unnamed_bytes / 1024:.0f} KiB)" + (f", {len(patterns)} of them in {script_path}" if script_path else ""), file=sys.stderr)
