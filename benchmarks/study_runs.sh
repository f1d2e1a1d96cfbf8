#!/bin/bash
# Keeps a study root's finished runs between machines, without checkpoints or figures: the files the report and the
# runner read (study.json; per finished run metrics.json, per_slice.json, scalars.jsonl, results.md and, where
# measured, attention.json). The runner skips a run that has metrics.json, so an unpacked root resumes where the
# packed one stopped, and `study report` regenerates its report.
#
#   bash benchmarks/study_runs.sh pack ROOT FILE.tar.gz     # kept outside git, e.g. beside ROOT
#   bash benchmarks/study_runs.sh unpack FILE.tar.gz ROOT   # a run already finished in ROOT is kept
set -eu -o pipefail
step=${1:?usage: study_runs.sh pack ROOT FILE | unpack FILE ROOT}
case "$step" in
  pack)
    root=${2:?the study root}; out=$(realpath -m "${3:?the archive to write}")
    mkdir -p "$(dirname "$out")"
    cd "$root"
    mapfile -t files < <({ echo study.json; find . -name metrics.json -path '*seed*' -printf '%h\n' | sort |
      while read -r run; do
        for name in metrics.json per_slice.json scalars.jsonl results.md attention.json; do
          [ -f "$run/$name" ] && echo "$run/$name"
        done
      done; })
    tar czf "$out.tmp" "${files[@]}" && mv "$out.tmp" "$out"
    echo "[study_runs] $(grep -c '/metrics.json$' <(printf '%s\n' "${files[@]}")) finished run(s) of $root -> $out ($(du -h "$out" | cut -f1))"
    ;;
  unpack)
    archive=$(realpath "${2:?the archive}"); root=${3:?the study root}
    mkdir -p "$root"
    tar xzf "$archive" -C "$root" --skip-old-files
    echo "[study_runs] unpacked $(tar tzf "$archive" | grep -c '/metrics.json$') finished run(s) into $root"
    ;;
  *) echo "usage: study_runs.sh pack ROOT FILE | unpack FILE ROOT" >&2; exit 2 ;;
esac
