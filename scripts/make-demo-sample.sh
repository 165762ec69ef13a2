#!/usr/bin/env bash
# Regenerates daemon/assets/demo.flac, the demo's sample: four sentences spoken by
# espeak-ng with pauses between them, 16 kHz mono FLAC. Needs espeak-ng and sox.
set -euo pipefail
out=${1:-daemon/assets/demo.flac}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sentences=(
  "Good morning. Please turn on the kitchen lights."
  "What is the weather like today?"
  "Remind me to call the dentist tomorrow afternoon."
  "Set a timer for ten minutes."
)
parts=("$tmp/silence.wav")
sox -n -r 16000 -c 1 -b 16 "$tmp/silence.wav" trim 0 1.2
for i in "${!sentences[@]}"; do
  espeak-ng -s 150 -w "$tmp/raw$i.wav" "${sentences[$i]}"
  sox "$tmp/raw$i.wav" -r 16000 -c 1 -b 16 "$tmp/s$i.wav"
  parts+=("$tmp/s$i.wav" "$tmp/silence.wav")
done
sox "${parts[@]}" "$out"
echo "wrote $out ($(soxi -D "$out") s)"
