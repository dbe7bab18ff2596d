#!/usr/bin/env bash
# Renders the voice-OTP prompts committed under assets/prompts/<lang>/.
#
#   scripts/render-prompts.sh            # all languages
#   scripts/render-prompts.sh fr         # one language
#
# Needs espeak-ng and sox (Debian: apt-get install -y espeak-ng sox); only this
# script does: the engine and the tests read the committed files.
#
# Output format: WAV, 8000 Hz, mono, 16-bit signed little-endian PCM (a
# 44-byte canonical RIFF header, then samples), leading and trailing silence
# trimmed, peak-normalised to -3 dBFS. The engine G.711-encodes them per call
# (src/media/prompts.ts); rendering is deterministic for a given
# espeak-ng/sox version, but the committed files are the reference.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in espeak-ng sox; do
  command -v "$tool" >/dev/null || { echo "render-prompts: $tool is required (apt-get install -y espeak-ng sox)" >&2; exit 1; }
done

# lang -> espeak-ng voice
declare -A VOICE=([en]=en-gb [fr]=fr-fr [es]=es [de]=de)
declare -A INTRO=([en]="Your verification code is:" [fr]="Votre code de vérification est :" [es]="Su código de verificación es:" [de]="Ihr Bestätigungscode lautet:")
declare -A AGAIN=([en]="Again:" [fr]="Je répète :" [es]="Repito:" [de]="Noch einmal:")
declare -A DIGITS=(
  [en]="zero one two three four five six seven eight nine"
  [fr]="zéro un deux trois quatre cinq six sept huit neuf"
  [es]="cero uno dos tres cuatro cinco seis siete ocho nueve"
  [de]="null eins zwei drei vier fünf sechs sieben acht neun"
)

langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(en fr es de)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

render() { # lang name text
  local lang=$1 name=$2 text=$3 out="assets/prompts/$1/$2.wav"
  espeak-ng -v "${VOICE[$lang]}" -s 150 -w "$tmp/raw.wav" "$text"
  # 8 kHz mono 16-bit; trim silence at both ends (reverse trick); normalise.
  # -R (repeatable) and -D (no dither) make the output byte-identical run to run.
  sox -R "$tmp/raw.wav" -D -r 8000 -c 1 -b 16 -e signed-integer "$out" \
    silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse norm -3
}

for lang in "${langs[@]}"; do
  [ -n "${VOICE[$lang]:-}" ] || { echo "render-prompts: unknown language $lang" >&2; exit 1; }
  mkdir -p "assets/prompts/$lang"
  render "$lang" intro "${INTRO[$lang]}"
  render "$lang" again "${AGAIN[$lang]}"
  i=0
  for word in ${DIGITS[$lang]}; do
    render "$lang" "$i" "$word"
    i=$((i + 1))
  done
  echo "assets/prompts/$lang: $(ls "assets/prompts/$lang" | wc -l) files, $(du -sh "assets/prompts/$lang" | cut -f1)"
done
