"""Start the demo page: one question answered at every scale side by side, and the scale the predictor routes to.

    python scripts/demo.py                                   # checkpoints/tiny-m3 with its shipped predictor
    python scripts/demo.py --adaptive runs/quickstart/adaptive
    python scripts/demo.py --model DIR --predictor DIR --port 7861

Needs the `demo` extra: pip install -e ".[demo]". Serves on 127.0.0.1 (only this machine) unless --host says
otherwise; prints the address and which model and predictor it uses.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adaptive", help="a folder written by AdaptiveM3.save_pretrained (model/ + predictor/)")
    parser.add_argument("--model", help="an M3 model folder (default: checkpoints/tiny-m3)")
    parser.add_argument("--predictor", help="a saved scale predictor folder for --model")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.adaptive and (args.model or args.predictor):
        parser.error("pass either --adaptive DIR, or --model DIR with --predictor DIR")
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.exit('error: the demo needs gradio: pip install -e ".[demo]"')
    from m3.cli import use_threads, user_errors
    from m3_demo.app import build_demo, check_port, launch_kwargs
    from m3_demo.session import load_demo_model

    with user_errors():
        check_port(args.port)
        use_threads(args.threads)
        model = load_demo_model(args.adaptive, args.model, args.predictor)
        print(f"using {model.source}")
        blocks = build_demo(model)
        _, url, _ = blocks.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, quiet=True,
                                  **launch_kwargs())  # fmt: skip
    print(f"demo at {url} (Ctrl+C stops it)", flush=True)
    try:
        blocks.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        blocks.close()


if __name__ == "__main__":
    main()
