import numpy as np
import pytest
import soundfile as sf

from higgs_train.data.audio import load_audio
from higgs_train.errors import AudioError
from tests.conftest import VOICE_NAMES


def test_real_clips_decode_and_resample_to_24k(voices):
    rates = set()
    for name in VOICE_NAMES:
        path = voices / f"{name}.wav"
        info = sf.info(path)
        rates.add(info.samplerate)
        wave = load_audio(str(path), 24000)
        assert wave.ndim == 1 and wave.dtype.is_floating_point
        assert abs(len(wave) - info.frames * 24000 / info.samplerate) <= 1
        assert wave.abs().max() > 0.01  # speech, not silence
    assert {22050, 24000, 44100, 48000} <= rates


@pytest.mark.parametrize(("fmt", "ext"), [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_formats_and_stereo_mixdown(tmp_path, fmt, ext):
    rate = 16000
    t = np.arange(rate) / rate
    left, right = np.sin(2 * np.pi * 220 * t), -np.sin(2 * np.pi * 220 * t)
    path = tmp_path / f"s.{ext}"
    sf.write(path, np.stack([left, right], 1).astype(np.float32) * 0.5, rate, format=fmt)
    wave = load_audio(str(path), 24000)
    assert abs(len(wave) - 24000) < 2000  # lossy codecs pad a little
    assert wave.abs().max() < 0.05  # opposite channels cancel when mixed to mono


def test_bad_audio_errors(tmp_path):
    with pytest.raises(AudioError, match=r"m.jsonl:3: audio file .*nope.wav not found; fix the path in the manifest"):
        load_audio(str(tmp_path / "nope.wav"), 24000, "m.jsonl:3")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really audio" * 10)
    with pytest.raises(AudioError, match="cannot decode audio file .*junk.wav .*; convert it to WAV or FLAC"):
        load_audio(str(junk), 24000)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"is empty \(0 samples\)"):
        load_audio(str(empty), 24000)
