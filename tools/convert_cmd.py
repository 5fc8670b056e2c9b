"""`optc convert`: import a model into the IR and export it again."""

from __future__ import annotations

import json

from ..ir import load, save
from ..ir.stats import file_bytes, model_stats
from .paths import check_output_path


def run(args) -> int:
    check_output_path(args.model, args.output, (".onnx",))
    model = load(args.model)
    save(model, args.output, external_data=args.external_data)
    if args.json:
        st = model_stats(model)
        print(json.dumps({"input": args.model, "output": args.output, "nodes": st.nodes,
                          "parameters": st.parameters, "bytes_in": file_bytes(args.model),
                          "bytes_out": file_bytes(args.output)}, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="import into optc's IR and export again (round trip)",
                       description="Import a model into optc's IR and export it again. External-data weights "
                       "are streamed, never loaded whole.")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("-o", "--output", required=True, help="where to write the ONNX model (an .onnx file)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--external-data", dest="external_data", action="store_true", default=None,
                       help="write weights to <output>.data")
    group.add_argument("--no-external-data", dest="external_data", action="store_false",
                       help="inline every weight (fails past protobuf's 2 GB limit)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout: input, output, nodes, "
                   "parameters, bytes_in, bytes_out (external data included)")
    p.set_defaults(func=run)
