#!/bin/sh
# Step `thumbnail` of media.track: a JPEG frame of the clip (from the run's input), taken
# halfway through the audio that `extract_audio` found (from that step's output), WIDTH pixels
# wide (the first argument, 320 by default).
#
# Prints its output: {"thumbnail": path, "at": seconds, "width": WIDTH, "bytes": size,
# "audio": the audio file it was paired with}.
set -eu

fail() {
  jq -cn --arg code "$1" --arg message "$2" '{code: $code, message: $message}' >&2
  exit 3
}

width=${1:-320}
request=$(cat)
clip=$(printf '%s' "$request" | jq -r '.input.clip')
out_dir=$(printf '%s' "$request" | jq -r '.input.out_dir // empty')
[ -n "$out_dir" ] || out_dir=$(dirname "$clip")
audio=$(printf '%s' "$request" | jq -r '.outputs.extract_audio.audio')
at=$(printf '%s' "$request" | jq '.outputs.extract_audio.seconds / 2')
[ -f "$clip" ] || fail clip_not_found "no clip at $clip"

name=$(basename "$clip")
thumbnail="$out_dir/${name%.*}.jpg"
if ! ffmpeg -nostdin -v error -y -ss "$at" -i "$clip" -frames:v 1 -update 1 \
  -vf "scale=$width:-2" "$thumbnail.part.jpg" 2>ffmpeg.log; then
  fail ffmpeg_failed "taking a frame of $clip at ${at}s: $(tail -n 5 ffmpeg.log)"
fi
mv "$thumbnail.part.jpg" "$thumbnail"

bytes=$(wc -c <"$thumbnail")
jq -cn --arg thumbnail "$thumbnail" --argjson at "$at" --argjson width "$width" \
  --argjson bytes "$bytes" --arg audio "$audio" \
  '{thumbnail: $thumbnail, at: $at, width: $width, bytes: $bytes, audio: $audio}'
