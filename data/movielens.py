"""MovieLens-100k as a SequenceDataset, read from the recbole 1.2.1 wheel's dataset_example folder.

The data are fetched at run time with `pip download` (GroupLens terms: never commit them) and cached
outside the repository (default ~/.cache/recserve/ml-100k). recbole itself is never imported.

Attributes (coarse -> fine): genre (first listed genre), genres (the item's whole genre combination, which
determines `genre`), year_bucket (release year, coarse buckets; unknown years get their own bucket).
Behaviours: the star rating, "rating_1".."rating_5" (ids 1..5), or a single "rate" behaviour.

`python -m data.movielens --out DIR [--cache DIR]` writes MovieLens-100k as a dataset directory
(docs/dataset.md) with `write_movielens`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from data.sequences import SequenceDataset

RECBOLE_VERSION = "1.2.1"
WHEEL_MEMBERS = {"ml-100k.inter": "recbole/dataset_example/ml-100k/ml-100k.inter",
                 "ml-100k.item": "recbole/dataset_example/ml-100k/ml-100k.item"}
DEFAULT_CACHE = Path("~/.cache/recserve")
# Release years are concentrated in the 1990s, so the buckets are finer there.
YEAR_EDGES = (1960, 1980, 1990, 1995, 1996, 1997)


def fetch_movielens_100k(cache_dir: Path = DEFAULT_CACHE, timeout_s: float = 300.0) -> Path:
    """Directory holding ml-100k.inter and ml-100k.item; downloads the recbole wheel once when missing."""
    target = Path(cache_dir).expanduser() / "ml-100k"
    if all((target / name).is_file() for name in WHEEL_MEMBERS):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recbole-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"recbole=={RECBOLE_VERSION}", "--no-deps",
               "--only-binary=:all:", "-d", tmp, "--quiet"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"`{' '.join(cmd)}` took longer than {timeout_s} s; is PyPI reachable?") from e
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); MovieLens-100k comes from the "
                               f"recbole wheel on PyPI.\n{proc.stderr.strip()[-2000:]}")
        wheels = sorted(Path(tmp).glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download succeeded but left no recbole wheel in {tmp}: {os.listdir(tmp)}")
        with zipfile.ZipFile(wheels[0]) as zf:
            names = set(zf.namelist())
            for local, member in WHEEL_MEMBERS.items():
                if member not in names:
                    raise RuntimeError(f"{wheels[0].name} has no {member}")
                # Write then rename, so an interrupted run never leaves a truncated cache file.
                partial = target / (local + ".partial")
                with zf.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                partial.replace(target / local)
    return target


def parse_atomic_file(path: Path) -> dict[str, list[str]]:
    """RecBole atomic file: tab-separated, header `name:type` per column. Returns column name -> raw strings
    (the types, token/float/token_seq, are applied by the caller)."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        names = []
        for field in header:
            name, sep, ftype = field.partition(":")
            if not sep or ftype not in {"token", "token_seq", "float", "float_seq"}:
                raise ValueError(f"{path}: header field {field!r} is not `name:type` with a RecBole type")
            names.append(name)
        cols: dict[str, list[str]] = {n: [] for n in names}
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\n")
            if not line:
                continue
            values = line.split("\t")
            if len(values) != len(names):
                raise ValueError(f"{path}:{lineno}: {len(values)} fields, header has {len(names)}")
            for n, v in zip(names, values):
                cols[n].append(v)
    return cols


def year_bucket(year: str) -> int:
    """Release year -> bucket 0..len(YEAR_EDGES); a missing or malformed year -> len(YEAR_EDGES) + 1."""
    if not (len(year) == 4 and year.isdigit()):
        return len(YEAR_EDGES) + 1
    return int(np.searchsorted(YEAR_EDGES, int(year), side="right"))


def build_movielens(inter: dict[str, list[str]], item: dict[str, list[str]], min_user_events: int = 5,
                    behaviors: str = "rating", name: str = "ml100k") -> SequenceDataset:
    """Parsed atomic columns -> SequenceDataset. Users with fewer than `min_user_events` ratings are dropped;
    items that remain rated are re-indexed 1..N in ascending original id; each user's events are sorted by
    timestamp, ties kept in file order (stable sort)."""
    if behaviors not in ("rating", "single"):
        raise ValueError(f"behaviors must be 'rating' or 'single', got {behaviors!r}")
    if min_user_events < 1:
        raise ValueError(f"min_user_events must be >= 1, got {min_user_events}")
    users = np.array(inter["user_id"])
    raw_items = np.array(inter["item_id"])
    ratings = np.array(inter["rating"], np.float64)
    ts = np.array(inter["timestamp"], np.float64)

    uniq_users, user_idx, counts = np.unique(users, return_inverse=True, return_counts=True)
    keep = counts[user_idx] >= min_user_events
    if not keep.any():
        raise ValueError(f"no user has >= {min_user_events} interactions")
    raw_items, ratings, ts, user_idx = raw_items[keep], ratings[keep], ts[keep], user_idx[keep]

    meta = {iid: (title, year, genres) for iid, title, year, genres in
            zip(item["item_id"], item["movie_title"], item["release_year"], item["class"])}
    missing = sorted(set(raw_items.tolist()) - set(meta))
    if missing:
        raise ValueError(f"{len(missing)} rated items have no row in the item file, e.g. {missing[:5]}")
    kept_items = sorted(set(raw_items.tolist()), key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))
    new_id = {iid: i for i, iid in enumerate(kept_items, start=1)}
    n = len(kept_items)

    genre_lists = [meta[iid][2].split() or ["unknown"] for iid in kept_items]
    genre_vocab = {g: i for i, g in enumerate(sorted({g for gl in genre_lists for g in gl}))}
    combo_vocab = {c: i for i, c in enumerate(sorted({" ".join(gl) for gl in genre_lists}))}
    genre = np.zeros(n + 1, np.int64)
    combo = np.zeros(n + 1, np.int64)
    years = np.zeros(n + 1, np.int64)
    texts = [""]
    for i, (iid, gl) in enumerate(zip(kept_items, genre_lists), start=1):
        title, year, _ = meta[iid]
        genre[i], combo[i], years[i] = genre_vocab[gl[0]], combo_vocab[" ".join(gl)], year_bucket(year)
        texts.append(f"{title} ({year}): {', '.join(gl)}")

    items = np.array([new_id[x] for x in raw_items.tolist()], np.int64)
    if behaviors == "rating":
        beh = np.clip(np.rint(ratings), 1, 5).astype(np.int64)
        names = ("pad",) + tuple(f"rating_{r}" for r in range(1, 6))
    else:
        beh = np.ones(len(items), np.int64)
        names = ("pad", "rate")
    # Stable: file order breaks timestamp ties (many ratings share a second).
    order = np.lexsort((ts, user_idx))
    items, beh, ts, user_idx = items[order], beh[order], ts[order], user_idx[order]
    bounds = np.searchsorted(user_idx, np.arange(len(uniq_users) + 1))
    spans = [(int(bounds[u]), int(bounds[u + 1])) for u in range(len(uniq_users)) if bounds[u + 1] > bounds[u]]
    return SequenceDataset(
        name=name, num_items=n,
        item_attributes={"genre": genre, "genres": combo, "year_bucket": years},
        item_texts=texts,
        user_items=[items[lo:hi] for lo, hi in spans],
        user_behaviors=[beh[lo:hi] for lo, hi in spans],
        user_timestamps=[ts[lo:hi] for lo, hi in spans],
        behavior_names=names,
        repeats=False,  # a movie is rated once
    )


def load_movielens_100k(cache_dir: Path = DEFAULT_CACHE, min_user_events: int = 5,
                        behaviors: str = "rating") -> SequenceDataset:
    folder = fetch_movielens_100k(cache_dir)
    return build_movielens(parse_atomic_file(folder / "ml-100k.inter"), parse_atomic_file(folder / "ml-100k.item"),
                           min_user_events=min_user_events, behaviors=behaviors)


DATASET_NAME = "movielens-100k"
RATING_EVENTS = tuple(f"rating_{r}" for r in range(1, 6))


def _canonical_int(token: str) -> bool:
    """True when int64 keeps the token as it is ("42"; not "042", "+4" or "4.0")."""
    return token.isascii() and token.isdigit() and str(int(token)) == token and int(token) < 2 ** 63


def movie_title(title: str, year: str) -> str:
    """Title and year ("Toy Story (1995)"); the bare title when the release year is missing or malformed."""
    return f"{title} ({year})" if len(year) == 4 and year.isdigit() else title


def genre_category(genres: str) -> str:
    """Category path of a movie: first listed genre > the whole genre combination ("Comedy > Comedy, Drama",
    "Drama > Drama"), the two levels of build_movielens' `genre` and `genres` attributes; a movie without a
    genre is "unknown > unknown"."""
    gl = genres.split() or ["unknown"]
    return f"{gl[0]} > {', '.join(gl)}"


def write_movielens(inter_path: str | Path, item_path: str | Path, out_dir: str | Path, *,
                    name: str = DATASET_NAME, overwrite: bool = False, max_users: int | None = None) -> dict:
    """Write a RecBole atomic .inter/.item pair (MovieLens-100k) as the dataset contract (docs/dataset.md) into
    `out_dir`; returns the row counts.

    items.parquet: every movie of the item file (item_id, title "Title (year)", category `genre_category`),
    no images. events.parquet: every rating (no filtering: that is the build's job), event "rating_<stars>"
    (stars rounded, clipped to 1..5), timestamp int64 seconds, sorted by (user, timestamp) with file order
    breaking ties; user_id int64 when every user token is a plain integer (as in ML-100k), else the tokens
    as strings. dataset.json declares "rating_1".."rating_5" with "rating_5" the conversion event, and
    "repeats": false (a movie is rated once).
    `max_users`: only the ratings of the first max_users users in id order (a subset for quick builds and CI;
    every movie stays in the catalog)."""
    import pyarrow as pa

    from data.dataset import staged_dataset_dir, write_dataset_json, write_parquet

    inter, item = parse_atomic_file(Path(inter_path)), parse_atomic_file(Path(item_path))
    for cols, need, path in ((inter, ("user_id", "item_id", "rating", "timestamp"), inter_path),
                             (item, ("item_id", "movie_title", "release_year", "class"), item_path)):
        missing = [c for c in need if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (has {list(cols)})")
    for token in item["item_id"] + inter["item_id"]:
        if not _canonical_int(token):
            raise ValueError(f"item id {token!r} is not an integer; the dataset contract needs int64 item ids")
    item_ids = np.array([int(x) for x in item["item_id"]], np.int64)
    uniq, counts = np.unique(item_ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{item_path}: duplicate item ids, e.g. {uniq[counts > 1][:5].tolist()}")
    ev_items = np.array([int(x) for x in inter["item_id"]], np.int64)
    unknown = np.setdiff1d(ev_items, item_ids)
    if len(unknown):
        raise ValueError(f"{len(unknown)} rated items have no row in the item file, e.g. {unknown[:5].tolist()}")

    users_raw = inter["user_id"]
    int_users = all(_canonical_int(u) for u in users_raw)
    users = np.array([int(u) for u in users_raw], np.int64) if int_users else np.array(users_raw, dtype=object)
    ratings = np.clip(np.rint(np.array(inter["rating"], np.float64)), 1, 5).astype(np.int64)
    ts = np.rint(np.array(inter["timestamp"], np.float64)).astype(np.int64)
    _, user_rank = np.unique(users, return_inverse=True)
    order = np.lexsort((ts, user_rank))  # stable: file order breaks ties
    if max_users is not None:
        order = order[user_rank[order] < max_users]

    order_items = np.argsort(item_ids, kind="stable")
    with staged_dataset_dir(Path(out_dir), overwrite) as d:
        n_items = write_parquet(d / "items.parquet", {
            "item_id": item_ids[order_items],
            "title": [movie_title(item["movie_title"][i], item["release_year"][i]) for i in order_items.tolist()],
            "category": [genre_category(item["class"][i]) for i in order_items.tolist()],
        }, pa.schema([("item_id", pa.int64()), ("title", pa.string()), ("category", pa.string())]))
        n_events = write_parquet(d / "events.parquet", {
            "user_id": users[order] if int_users else [str(u) for u in users[order]],
            "item_id": ev_items[order],
            "event": [RATING_EVENTS[r - 1] for r in ratings[order].tolist()],
            "timestamp": ts[order],
        }, pa.schema([("user_id", pa.int64() if int_users else pa.string()), ("item_id", pa.int64()),
                      ("event", pa.string()), ("timestamp", pa.int64())]))
        # A movie is rated once: recommendations and evaluation leave the user's rated movies out.
        write_dataset_json(d / "dataset.json", name, RATING_EVENTS, RATING_EVENTS[-1], repeats=False)
    return {"items": n_items, "events": n_events, "users": int(len(np.unique(user_rank[order]))),
            "rated_items": int(len(np.unique(ev_items[order])))}


def main() -> None:
    parser = argparse.ArgumentParser(description="Write MovieLens-100k (from the recbole wheel) as a dataset "
                                                 "directory (docs/dataset.md).")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="dataset directory to write; must be absent or empty")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                        help=f"where the downloaded ml-100k files are cached (default {DEFAULT_CACHE})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DIR when it holds a dataset written before")
    parser.add_argument("--max-users", type=int, metavar="N",
                        help="only the ratings of the first N users (by id): a subset for a quick build")
    args = parser.parse_args()
    folder = fetch_movielens_100k(args.cache)
    try:
        counts = write_movielens(folder / "ml-100k.inter", folder / "ml-100k.item", args.out,
                                 overwrite=args.overwrite, max_users=args.max_users)
    except (FileExistsError, NotADirectoryError) as e:
        parser.error(str(e))
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
