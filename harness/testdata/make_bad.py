#!/usr/bin/env python3
"""Writes the bad-input corpus under harness/testdata/bad/ (plain Python, no torch): one
folder per case, each a checkpoint folder that `q3n inspect --model` must refuse with a
one-line error and exit 2, and q3n_model_open with the status and message fragment listed
in bad/cases.tsv (read by harness/test_checkpoint.c). The files are committed; the tests
never run Python."""
import argparse
import json
import pathlib
import shutil
import struct

HERE = pathlib.Path(__file__).parent
TINY = (HERE / "config" / "tiny_5x.json").read_text()


def st_bytes(header: dict | str | bytes, data: bytes, hlen: int | None = None) -> bytes:
    """A safetensors file from a header (dict, raw text or raw bytes) and a data area."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header) if hlen is None else hlen) + header + data


def t(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE / "bad"))
    out = pathlib.Path(ap.parse_args().out)
    cases: list[tuple[str, str, str, dict]] = []  # name, status, fragment, files

    def case(name: str, status: str, fragment: str, files: dict, config: str | None = TINY) -> None:
        if config is not None:
            files = {"config.json": config, **files}
        cases.append((name, status, fragment, files))

    norm = {"model.norm.weight": t("F32", [32], 0, 128)}
    good_data = bytes(128)
    case("st_too_short", "format", "truncated before the 8-byte header length", {"model.safetensors": b"\x10\x00\x00"})
    case("st_header_past_eof", "format", "runs past the end of the file",
         {"model.safetensors": st_bytes(norm, good_data, hlen=1 << 40)})
    case("st_truncated_data", "format", "outside the data area",
         {"model.safetensors": st_bytes(norm, good_data)[:-40]})
    case("st_out_of_range", "format", "data_offsets [0, 4096] outside the data area",
         {"model.safetensors": st_bytes({"model.norm.weight": t("F32", [1024], 0, 4096)}, good_data)})
    case("st_overlap", "format", "overlaps tensor",
         {"model.safetensors": st_bytes({"a": t("F32", [16], 0, 64), "b": t("F32", [16], 32, 96),
                                         "c": t("F32", [8], 96, 128)}, good_data)})
    case("st_gap", "format", "belong to no tensor",
         {"model.safetensors": st_bytes({"a": t("F32", [8], 0, 32), "b": t("F32", [16], 64, 128)}, good_data)})
    case("st_trailing_bytes", "format", "the tensors cover 64",
         {"model.safetensors": st_bytes({"a": t("F32", [16], 0, 64)}, good_data)})
    case("st_unknown_dtype", "format", "unknown dtype 'F12'",
         {"model.safetensors": st_bytes({"model.norm.weight": t("F12", [32], 0, 128)}, good_data)})
    case("st_shape_lies", "format", "shape [3, 3] of F32 is 36 bytes but data_offsets span 128",
         {"model.safetensors": st_bytes({"model.norm.weight": t("F32", [3, 3], 0, 128)}, good_data)})
    case("st_negative_offset", "format", "data_offsets is not two non-negative integers",
         {"model.safetensors": st_bytes({"model.norm.weight": t("F32", [32], -8, 120)}, good_data)})
    case("st_negative_dim", "format", "shape[0] is not a non-negative integer",
         {"model.safetensors": st_bytes({"model.norm.weight": t("F32", [-32], 0, 128)}, good_data)})
    case("st_huge_shape", "format", "overflows 64 bits",
         {"model.safetensors": st_bytes({"w": t("F32", [2**40, 2**40], 0, 128)}, good_data)})
    case("st_not_json", "format", "header is not valid JSON",
         {"model.safetensors": st_bytes('{"model.norm.weight": {"dtype": "F32", "shape": [32', good_data)})
    case("st_not_object", "format", "header does not start with a JSON object",
         {"model.safetensors": st_bytes("[1, 2, 3]", good_data)})
    case("st_entry_not_object", "format", "tensor w: entry is not an object",
         {"model.safetensors": st_bytes('{"w": 7}', b"")})
    case("st_duplicate_name", "format", "appears twice",
         {"model.safetensors": st_bytes('{"w":{"dtype":"F32","shape":[16],"data_offsets":[0,64]},'
                                        '"w":{"dtype":"F32","shape":[16],"data_offsets":[64,128]}}', good_data)})
    case("st_fp8_block_scales", "unsupported", "FP8",
         {"model.safetensors": st_bytes({"model.norm.weight": t("BF16", [32], 0, 64),
                                         "model.embed_tokens.weight": t("F8_E4M3", [8, 8], 64, 128)}, good_data)})
    case("st_weight_scale_inv", "unsupported", "weight_scale_inv",
         {"model.safetensors": st_bytes({"model.layers.0.mlp.gate.weight": t("BF16", [16], 0, 32),
                                         "model.layers.0.mlp.gate.weight_scale_inv": t("F32", [24], 32, 128)},
                                        good_data)})
    case("st_missing_tensors", "shape", "missing", {"model.safetensors": st_bytes(norm, good_data)})
    shard = st_bytes(norm, good_data)
    case("index_shard_escapes", "format", "is not a file name in the folder",
         {"model.safetensors.index.json": json.dumps({"weight_map": {"model.norm.weight": "../x.safetensors"}}),
          "x.safetensors": shard})
    case("index_lies", "format", "weight_map puts model.embed_tokens.weight in a.safetensors, which does not hold it",
         {"model.safetensors.index.json": json.dumps({"weight_map": {"model.norm.weight": "a.safetensors",
                                                                      "model.embed_tokens.weight": "a.safetensors"}}),
          "a.safetensors": shard})
    case("index_unlisted_tensor", "format", "is not in the weight_map",
         {"model.safetensors.index.json": json.dumps({"weight_map": {"a": "a.safetensors"}}),
          "a.safetensors": st_bytes({"a": t("F32", [8], 0, 32), "b": t("F32", [24], 32, 128)}, good_data)})
    case("index_no_weight_map", "format", "weight_map is missing",
         {"model.safetensors.index.json": json.dumps({"metadata": {}})})
    case("index_missing_shard", "io", "b.safetensors: cannot open",
         {"model.safetensors.index.json": json.dumps({"weight_map": {"model.norm.weight": "b.safetensors"}})})
    case("pickle_bin", "unsupported", "convert the checkpoint to safetensors",
         {"pytorch_model.bin": b"\x80\x02}q\x00." + bytes(32)})
    case("pickle_index", "unsupported", "never unpickles",
         {"model.safetensors.index.json": json.dumps({"weight_map": {"model.norm.weight": "pytorch_model-1.bin"}})})
    case("no_weights", "io", "no model.safetensors or model.safetensors.index.json", {})
    case("config_missing", "io", "config.json: cannot open", {"model.safetensors": shard}, config=None)
    case("config_not_json", "format", "config.json: not valid JSON", {"model.safetensors": shard},
         config='{"vocab_size": 97,')
    cfg = json.loads(TINY)
    cfg["hidden_size"] = -1
    case("config_absurd_hidden", "config", "hidden_size (-1)", {"model.safetensors": shard}, config=json.dumps(cfg))
    cfg = json.loads(TINY)
    del cfg["num_experts"]
    case("config_missing_field", "config", "num_experts is missing", {"model.safetensors": shard},
         config=json.dumps(cfg))
    cfg = json.loads(TINY)
    cfg["num_experts_per_tok"] = 100
    case("config_topk_above_experts", "config", "num_experts_per_tok (100)", {"model.safetensors": shard},
         config=json.dumps(cfg))

    out.mkdir(parents=True, exist_ok=True)
    for name, _, _, _ in cases:  # only this script's folders: the loose files are the fuzzer's
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    lines = ["# case\tstatus\tmessage fragment (written by make_bad.py)"]
    for name, status, fragment, files in cases:
        d = out / name
        d.mkdir()
        for fname, content in files.items():
            (d / fname).write_bytes(content.encode() if isinstance(content, str) else content)
        lines.append(f"{name}\t{status}\t{fragment}")
    (out / "cases.tsv").write_text("\n".join(lines) + "\n")
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
