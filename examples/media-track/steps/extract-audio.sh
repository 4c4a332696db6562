#!/bin/sh
# Step `extract_audio` of media.track: the clip's sound track, as an AAC file in the output
# directory.
#
# Reads the step request (JSON) on standard input: the run's input is {"clip", "out_dir"}.
# Prints its output: {"audio": path, "seconds": duration, "bytes": size}.
# A missing clip or an ffmpeg error fails the step for good (exit 3, the reason as JSON on
# standard error); see docs/steps.md, "Command steps".
set -eu

fail() {
  jq -cn --arg code "$1" --arg message "$2" '{code: $code, message: $message}' >&2
  exit 3
}

request=$(cat)
clip=$(printf '%s' "$request" | jq -r '.input.clip')
out_dir=$(printf '%s' "$request" | jq -r '.input.out_dir // empty')
[ -n "$out_dir" ] || out_dir=$(dirname "$clip")
[ -f "$clip" ] || fail clip_not_found "no clip at $clip"
mkdir -p "$out_dir" || fail out_dir_unusable "cannot create $out_dir"

name=$(basename "$clip")
audio="$out_dir/${name%.*}.m4a"
# Written under another name, then renamed: an execution killed halfway leaves no half file
# under the final name. ffmpeg's log stays in the step's own (temporary) working directory.
if ! ffmpeg -nostdin -v error -y -i "$clip" -vn -c:a aac -b:a 96k "$audio.part.m4a" 2>ffmpeg.log; then
  fail ffmpeg_failed "extracting the audio of $clip: $(tail -n 5 ffmpeg.log)"
fi
mv "$audio.part.m4a" "$audio"

seconds=$(ffprobe -v error -show_entries format=duration -of default=noprint_wrappers=1:nokey=1 "$audio")
bytes=$(wc -c <"$audio")
jq -cn --arg audio "$audio" --argjson seconds "$seconds" --argjson bytes "$bytes" \
  '{audio: $audio, seconds: $seconds, bytes: $bytes}'
