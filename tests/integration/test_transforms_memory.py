"""Decoding memory, measured in a process of its own (peak RSS is per process)."""

from helpers import png16


def test_decoding_a_16_bit_photo_stays_within_what_its_header_says_it_needs(tmp_path):
    """Measured in a process of its own (peak RSS is per process): decoding and tiling a 16-bit 36 MP PNG (68 KiB)
    grows the peak by no more than ``decoding_bytes`` and its tiles, where a float copy of it once cost twice that."""
    import subprocess
    import sys

    (tmp_path / "deep.png").write_bytes(png16(6000))
    script = (
        "import resource, sys\n"
        "from cracknet.images.decoding import Preprocessing, decode_tiles, decoding_bytes, open_image\n"
        f"data = open({str(tmp_path / 'deep.png')!r}, 'rb').read()\n"
        "need = decoding_bytes(open_image(data))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "tiles = decode_tiles(data, Preprocessing(image_size=64), 227, 0.25)[2]\n"
        "grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before\n"
        "print(grew, need, tiles.nbytes)\n")
    grew, need, tiles = map(int, subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                check=True).stdout.split())
    assert grew < 1.1 * need + tiles + (16 << 20), (grew >> 20, need >> 20)
