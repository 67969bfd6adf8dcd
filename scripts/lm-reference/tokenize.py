"""Reference token ids for a GGUF's tokenizer, from llama.cpp itself.

Run with the virtual environment that scripts/setup-lm-reference.sh makes (it prints
DISTILLERY_LM_REFERENCE_PYTHON):

    $PY tokenize.py MODEL.gguf FILE...           # each file's bytes are one text
    $PY tokenize.py MODEL.gguf --json < texts    # stdin: a JSON list of strings
    $PY tokenize.py MODEL.gguf -                 # stdin's bytes are one text
    $PY tokenize.py MODEL.gguf --info [FILE...]  # the vocabulary's size and special ids (and "ids")

Prints one JSON line: a list holding one list of token ids per text, in order; with --info an
object {"n_vocab", "bos", "eos", "eot", "pad", "add_bos", "add_eos", "llama_cpp", "ids"}, where a
special id llama.cpp does not know is -1.

As llama.cpp tokenizes plain text by default: no BOS/EOS is added (--add-special adds them where
the GGUF's add_bos/add_eos say so; SmolLM2's say no), and control tokens written in the text, such
as "<|im_start|>", are not matched but tokenized as the characters they are (--parse-special
matches them, as a chat template's rendering needs).

The tokenizer is llama.cpp's (xllamacpp's wheel is llama.cpp compiled, exporting its C API; called
here through ctypes), so it is independent of the `tokenizers` crate the project rebuilds it with.
"""

import os
import sys

# This file shares its name with the standard library's `tokenize` (which tracebacks and `inspect`
# import): keep its own folder off the import path so that name stays the standard library's.
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402

import xllamacpp  # noqa: E402
import xllamacpp.xllamacpp as native  # noqa: E402

_lib = ctypes.CDLL(native.__file__)

# llama.cpp logs model loading to stderr; keep stderr for errors.
_LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_quiet = _LOG_FN(lambda level, text, user_data: None)


class _ModelParams(ctypes.Structure):
    """llama_model_params, kept opaque: only llama.cpp's defaults are passed back, so its layout
    (which changes between llama.cpp builds) does not matter. Larger than the real struct (about
    80 bytes): returned through a hidden pointer and passed by value on the stack, extra bytes are
    never read."""

    _fields_ = [("raw", ctypes.c_uint8 * 1024)]


def _declare(name, restype, *argtypes):
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_p = ctypes.c_void_p
_log_set = _declare("llama_log_set", None, _LOG_FN, _p)
_backend_init = _declare("llama_backend_init", None)
_default_params = _declare("llama_model_default_params", _ModelParams)
_load = _declare("llama_model_load_from_file", _p, ctypes.c_char_p, _ModelParams)
_get_vocab = _declare("llama_model_get_vocab", _p, _p)
_n_tokens = _declare("llama_vocab_n_tokens", ctypes.c_int32, _p)
_special = {
    name: _declare(f"llama_vocab_{name}", ctypes.c_int32, _p) for name in ("bos", "eos", "eot", "pad")
}
_add_bos = _declare("llama_vocab_get_add_bos", ctypes.c_bool, _p)
_add_eos = _declare("llama_vocab_get_add_eos", ctypes.c_bool, _p)
_tokenize = _declare(
    "llama_tokenize",
    ctypes.c_int32,
    _p,  # vocab
    ctypes.c_char_p,  # text (UTF-8, need not be NUL-terminated)
    ctypes.c_int32,  # text length in bytes
    ctypes.POINTER(ctypes.c_int32),  # tokens out
    ctypes.c_int32,  # room in tokens
    ctypes.c_bool,  # add_special: BOS/EOS as the vocabulary's add_bos/add_eos say
    ctypes.c_bool,  # parse_special: match control tokens written in the text
)


def load_vocab(path):
    """The vocabulary of the GGUF at `path` (the whole model is memory-mapped: llama.cpp's default
    parameters, see _ModelParams)."""
    if not os.path.isfile(path):
        sys.exit(f"tokenize.py: no GGUF at {path}")
    _log_set(_quiet, None)
    _backend_init()
    model = _load(path.encode(), _default_params())
    if not model:
        sys.exit(f"tokenize.py: llama.cpp could not load {path}")
    return _get_vocab(model)


def tokenize(vocab, text, add_special=False, parse_special=False):
    """Token ids of `text` (bytes), as llama.cpp's llama_tokenize gives them."""
    room = len(text) + 8  # a token is at least one byte, plus BOS/EOS
    while True:
        out = (ctypes.c_int32 * room)()
        n = _tokenize(vocab, text, len(text), out, room, add_special, parse_special)
        if n >= 0:
            return list(out[:n])
        if -n <= room:
            sys.exit(f"tokenize.py: llama_tokenize failed ({n})")
        room = -n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", help="the GGUF whose tokenizer to use")
    ap.add_argument("files", nargs="*", help="text files, one text each ('-': stdin's bytes)")
    ap.add_argument("--json", action="store_true", help="read a JSON list of strings from stdin")
    ap.add_argument("--info", action="store_true", help="print the vocabulary size and special ids")
    ap.add_argument("--add-special", action="store_true", help="add BOS/EOS where the GGUF says so")
    ap.add_argument("--parse-special", action="store_true", help="match control tokens in the text")
    args = ap.parse_intermixed_args()
    if args.json and args.files:
        ap.error("--json reads the texts from stdin: name no files")
    if not (args.json or args.files or args.info):
        ap.error("name text files, '-', or --json")

    texts = []
    if args.json:
        data = json.load(sys.stdin)
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            sys.exit("tokenize.py: --json wants a JSON list of strings on stdin")
        texts = [t.encode("utf-8") for t in data]
    for name in args.files:
        if name == "-":
            texts.append(sys.stdin.buffer.read())
        else:
            try:
                with open(name, "rb") as f:
                    texts.append(f.read())
            except OSError as e:
                sys.exit(f"tokenize.py: {e}")

    vocab = load_vocab(args.gguf)
    ids = [tokenize(vocab, t, args.add_special, args.parse_special) for t in texts]
    if args.info:
        info = {"n_vocab": _n_tokens(vocab)}
        info.update({name: fn(vocab) for name, fn in _special.items()})
        info.update(add_bos=bool(_add_bos(vocab)), add_eos=bool(_add_eos(vocab)))
        info["llama_cpp"] = f"xllamacpp {xllamacpp.__version__}"
        info["ids"] = ids
        json.dump(info, sys.stdout, separators=(",", ":"))
    else:
        json.dump(ids, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
