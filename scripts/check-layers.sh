#!/usr/bin/env bash
# The layering check: "each layer uses only the layers above it".
#
#   scripts/check-layers.sh [ROOT]     (ROOT: a source tree, default this one)
#
# Its input is the layer table of ROOT/docs/architecture.md (section
# "## Layers"): one row per layer, in order, with its folders in backticks
# (column 2) and its public headers (last column). A row's layer may use the
# layers of the rows above it and its own, nothing below. For every .c / .h
# file in a layer's folders it checks:
#
#   - #include "..." lines: a header of a layer below is a violation; a
#     public header (dbkit/X.h) belongs to the row that lists X.h;
#   - calls: dbk__<folder>_*( and dbk_<folder>_*( name the layer of <folder>
#     (dbk__pool_acquire is the pool's, dbk_batch_run the batch layer's); a
#     call into a layer below is a violation (comments are not read);
#   - the apps layer (cli/, bench/, examples/...) includes public headers and
#     its own files only, never a header under src/.
#
# Exceptions are listed in architecture.md under "### Layer check
# exceptions" as lines "- `file`: `included header` — reason"; the check
# accepts exactly those includes. Exit status 1 and one line per violation
# when anything is wrong, 0 and a one-line summary otherwise.
set -euo pipefail
ROOT=${1:-$(cd "$(dirname "$0")/.." && pwd)}
ROOT=$(cd "$ROOT" && pwd)
DOC=$ROOT/docs/architecture.md
[ -f "$DOC" ] || { echo "check-layers: $DOC not found" >&2; exit 2; }

declare -A rank_of_folder=() rank_of_header=() rank_of_prefix=() name_of_rank=() allowed=()
folders=()
apps_rank=-1
n=0
in_layers=0
while IFS= read -r line; do
  case "$line" in
    "## Layers"*) in_layers=1; continue ;;
    "## "*) [ $in_layers = 1 ] && break ;;
  esac
  [ $in_layers = 1 ] || continue
  case "$line" in "|"*) ;; *) continue ;; esac
  IFS='|' read -r _ name fcol _ <<<"$line"
  name=$(echo "$name" | tr -d ' ')
  case "$name" in layer | ---* | "") continue ;; esac
  last=${line%|}
  last=${last##*|}
  name_of_rank[$n]=$name
  for f in $(grep -o '`[^`]*/`' <<<"$fcol" | tr -d '`'); do
    rank_of_folder[${f%/}]=$n
    folders+=("${f%/}")
    base=$(basename "$f")
    case "$f" in src/*) rank_of_prefix[$base]=$n ;; *) apps_rank=$n ;; esac
  done
  for h in $(grep -o '`[a-z_]*\.h`' <<<"$last" | tr -d '`'); do
    rank_of_header[$h]=$n
  done
  n=$((n + 1))
done <"$DOC"
[ $n -gt 0 ] || { echo "check-layers: no layer table in $DOC" >&2; exit 2; }
# The umbrella header includes every public header: the last library row.
rank_of_header[dbkit.h]=$(( apps_rank >= 0 ? apps_rank - 1 : n - 1 ))
# Other spellings of a layer's prefix.
[ -n "${rank_of_prefix[migrate]:-}" ] && rank_of_prefix[mig]=${rank_of_prefix[migrate]}
[ -n "${rank_of_prefix[driver]:-}" ] && for p in pg sq sqlite; do rank_of_prefix[$p]=${rank_of_prefix[driver]}; done

# Exceptions: "- `file`: `header` — reason" under "### Layer check exceptions".
in_exc=0
while IFS= read -r line; do
  case "$line" in
    "### Layer check exceptions"*) in_exc=1; continue ;;
    "#"*) in_exc=0 ;;
  esac
  [ $in_exc = 1 ] || continue
  if [[ $line =~ ^-\ \`([^\`]+)\`:\ \`([^\`]+)\` ]]; then
    allowed["${BASH_REMATCH[1]}|${BASH_REMATCH[2]}"]=1
  fi
done <"$DOC"

layer_of_path() { # repo-relative path -> rank, or empty
  local p=$1 best="" blen=0 f
  for f in "${folders[@]}"; do
    if [[ $p == "$f"/* && ${#f} -gt $blen ]]; then best=${rank_of_folder[$f]}; blen=${#f}; fi
  done
  echo "$best"
}

# Every file of every layer, with its rank, for one awk pass.
files=()
ranks=()
for f in "${folders[@]}"; do
  [ -d "$ROOT/$f" ] || continue
  while IFS= read -r -d '' file; do
    rel=${file#"$ROOT"/}
    r=$(layer_of_path "$rel")
    [ -n "$r" ] || continue
    files+=("$rel")
    ranks+=("$r")
  done < <(find "$ROOT/$f" -type f \( -name '*.c' -o -name '*.h' \) -print0 | sort -z)
done
# Includes that resolve to a file of the tree: "file|line|target" (resolved
# against the file's folder, then against src/ as tests and bench do).
includes=$(cd "$ROOT" && for rel in "${files[@]}"; do
  { grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$rel" || true; } | while IFS=: read -r ln txt; do
    inc=${txt#*\"}
    inc=${inc%%\"*}
    case "$inc" in dbkit/*) echo "$rel|$ln|include/$inc"; continue ;; esac
    for cand in "$(dirname "$rel")/$inc" "src/$inc"; do
      norm=$(realpath -m --relative-to=. "$cand")
      if [ -e "$norm" ]; then echo "$rel|$ln|$norm"; break; fi
    done
  done
done)
tables=$(
  for k in "${!rank_of_folder[@]}"; do echo "F|$k|${rank_of_folder[$k]}"; done
  for k in "${!rank_of_header[@]}"; do echo "H|$k|${rank_of_header[$k]}"; done
  for k in "${!rank_of_prefix[@]}"; do echo "P|$k|${rank_of_prefix[$k]}"; done
  for k in "${!name_of_rank[@]}"; do echo "N|$k|${name_of_rank[$k]}"; done
  for k in "${!allowed[@]}"; do echo "A|$k"; done
  for i in "${!files[@]}"; do echo "R|${files[$i]}|${ranks[$i]}"; done
  echo "X|apps|$apps_rank"
)
cd "$ROOT"
set +e
printf '%s\n' "$tables" | awk -v incs="$includes" '
function layer_of(p,   f, best, blen) {
  best = ""; blen = 0
  for (f in frank) if (index(p, f "/") == 1 && length(f) > blen) { best = frank[f]; blen = length(f) }
  return best
}
function bad(msg) { print msg; nv++ }
FNR == NR {
  split($0, a, "|")
  if (a[1] == "F") frank[a[2]] = a[3]
  else if (a[1] == "H") hrank[a[2]] = a[3]
  else if (a[1] == "P") prank[a[2]] = a[3]
  else if (a[1] == "N") lname[a[2]] = a[3]
  else if (a[1] == "A") allow[a[2] "|" a[3]] = 1
  else if (a[1] == "R") { rank[a[2]] = a[3]; order[++nf] = a[2] }
  else if (a[1] == "X") apps = a[3]
  next
}
END {
  n = split(incs, lines, "\n")
  for (i = 1; i <= n; i++) {
    if (lines[i] == "") continue
    split(lines[i], a, "|"); file = a[1]; ln = a[2]; t = a[3]; r = rank[file]
    if ((file "|" t) in allow) continue
    if (index(t, "include/dbkit/") == 1) {
      h = substr(t, 15); hr = (h in hrank) ? hrank[h] : 0
      if (r != apps && hr + 0 > r + 0)
        bad(file ":" ln ": " lname[r] " includes dbkit/" h " of " lname[hr] ", a layer below it")
      continue
    }
    if (r == apps) {
      if (index(t, "src/") == 1)
        bad(file ":" ln ": apps include " t ": only public headers (include/dbkit/) are allowed")
      continue
    }
    tr = layer_of(t)
    if (tr != "" && tr + 0 > r + 0)
      bad(file ":" ln ": " lname[r] " includes " t " of " lname[tr] ", a layer below it")
  }
  for (k = 1; k <= nf; k++) {
    file = order[k]; r = rank[file]
    if (r == apps) continue
    inc = 0; ln = 0
    while ((getline s < file) > 0) {
      ln++
      # drop comments (also across lines), then string literals
      out = ""
      while (s != "") {
        if (inc) { p = index(s, "*/"); if (!p) { s = ""; break }; s = substr(s, p + 2); inc = 0; continue }
        p = index(s, "/*"); q = index(s, "//")
        if (q && (!p || q < p)) { out = out substr(s, 1, q - 1); s = ""; break }
        if (!p) { out = out s; s = ""; break }
        out = out substr(s, 1, p - 1); s = substr(s, p + 2); inc = 1
      }
      gsub(/"([^"\\]|\\.)*"/, "\"\"", out)
      if (out ~ /^[ \t]*#[ \t]*include/) continue
      while (match(out, /dbk__?[a-z0-9]+_[a-z0-9_]*\(/)) {
        sym = substr(out, RSTART, RLENGTH - 1); out = substr(out, RSTART + RLENGTH)
        pre = sym; sub(/^dbk__?/, "", pre); sub(/_.*/, "", pre)
        if (!(pre in prank)) continue
        if (prank[pre] + 0 > r + 0 && !seen[file "|" sym]++)
          bad(file ":" ln ": " lname[r] " calls " sym " of " lname[prank[pre]] ", a layer below it")
      }
    }
    close(file)
  }
  checked = nf
  printf "%d\n", nv > "/dev/stderr"
  exit nv > 0
}' - /dev/null 2>/tmp/check-layers.$$
status=$?
set -e
violations=$(cat /tmp/check-layers.$$ 2>/dev/null || echo 0)
rm -f /tmp/check-layers.$$
checked=${#files[@]}
[ "$status" -le 1 ] || { echo "check-layers: awk failed" >&2; exit 2; }

if [ $violations -gt 0 ]; then
  echo "check-layers: $violations violation(s) of \"each layer uses only the layers above it\" (docs/architecture.md)"
  exit 1
fi
echo "check-layers: $checked files in $n layers, no violation"
