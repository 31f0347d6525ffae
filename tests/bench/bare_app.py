"""The baseline for the read benchmark: a bare FastAPI endpoint serving stored JSON documents.

One route, `GET /fhir/Patient/{id}`, answers with the bytes of a document kept in an in-memory
dict (404 when the id is unknown). It has no storage engine, content negotiation, headers or
error rendering: it is what "FastAPI + uvicorn on this machine" costs, so the fhir-server read
throughput can be put next to it.

It runs exactly like `fhir-server serve`: `uvicorn.run(app, host=..., port=..., log_level="info")`
in one process, so uvicorn makes the same choices (uvloop and httptools when installed, access
log on).

    python -m tests.bench.bare_app --port 8081 --documents patients.ndjson

`--documents` is NDJSON: one resource a line, stored verbatim as the response body (bench_crud
writes the exact bodies the fhir-server returned when the patients were created).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
from fastapi import FastAPI, Response

JSON = "application/fhir+json"


def load_documents(path: Path) -> dict[str, bytes]:
    """id -> the line's bytes, unchanged (the response body)."""
    documents: dict[str, bytes] = {}
    with path.open("rb") as lines:
        for line in lines:
            body = line.strip()
            if body:
                documents[orjson.loads(body)["id"]] = body
    return documents


def create_app(documents: dict[str, bytes]) -> FastAPI:
    app = FastAPI(title="bare", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/fhir/Patient/{rid}")
    async def read(rid: str) -> Response:
        body = documents.get(rid)
        if body is None:
            return Response(status_code=404)
        return Response(body, media_type=JSON)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--documents", type=Path, required=True, help="NDJSON of resources")
    args = parser.parse_args(argv)

    import uvicorn

    documents = load_documents(args.documents)
    print(f"bare app: {len(documents)} documents on http://{args.host}:{args.port}", flush=True)
    # The same call as fhir_server.cli.serve, so both servers run with the same uvicorn options.
    uvicorn.run(create_app(documents), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
