"""Build one scene of a data set from its downloaded folder into a TFDS data dir.

    python data_prep/build.py --dataset infraredcity_lite --scene monitor \
        --manual_dir /data/InfraredCity-Lite --data_dir /data/tfds [--layout packed|frames] \
        [--skip_corrupt] [--beam [--beam_runner DirectRunner] [Beam pipeline options …]]

Reads ``<manual_dir>/<scene>/{trainA,trainB,testA,testB}`` (see ``cptrans_jax/data/layouts.py``
for the two layouts), writes ``<data_dir>/<dataset>/<config>/1.0.0/`` (array_record files, no
TensorFlow needed) and indexes its frames for the input pipeline. The first unusable file stops
the build with its path and what was expected; ``--skip_corrupt`` leaves out files that do not
decode instead and lists them (wrong sizes or channel counts still stop it). Run
``data_prep/validate.py`` first to see every problem at once. An already built scene is reused
(even from a read-only data dir). A data dir that is a file or cannot be written, or a write that
fails during the build (a full disk), stops it with one ``error:`` line, and nothing half-built
is left in the data dir. Exit status 0 on success, 1 for a data problem, 2 for bad arguments
(the data dir included).

``--beam`` builds with Apache Beam (``pip install -e '.[beam]'``): the same records and frame
table, decoded and encoded by the runner's workers. Every other ``--option`` is passed to Beam
unchanged, so the local DirectRunner with N processes is

    python data_prep/build.py … --beam --direct_num_workers 4 \
        --direct_running_mode multi_processing

and a cluster runner takes its own options (``--beam_runner FlinkRunner --flink_master HOST:8081``;
the manual and data dirs must then be the same paths on every worker, a shared mount). An
option Beam does not know is an error, not a silent default.
"""

from __future__ import annotations

import argparse
import sys

from cptrans_jax.data.layouts import DATASETS, LAYOUTS, DataLayoutError, FrameError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--scene", required=True)
    parser.add_argument("--manual_dir", required=True, help="folder holding <scene>/trainA, …")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to build into")
    parser.add_argument("--layout", default="packed", choices=LAYOUTS)
    parser.add_argument(
        "--skip_corrupt", action="store_true", help="leave out undecodable files, listing them"
    )
    parser.add_argument(
        "--beam", action="store_true", help="build with Apache Beam; other --options go to Beam"
    )
    parser.add_argument(
        "--beam_runner", default="DirectRunner", help="Beam runner (with --beam; default local)"
    )
    args, beam_flags = parser.parse_known_args(argv)
    if beam_flags and not args.beam:
        parser.error(f"unrecognized arguments: {' '.join(beam_flags)} (Beam options need --beam)")
    if args.scene not in DATASETS[args.dataset].scenes:
        scenes = ", ".join(DATASETS[args.dataset].scenes)
        parser.error(f"{args.dataset} has scenes {scenes}; got {args.scene!r}")
    # Imports TFDS: after the argument checks.
    from cptrans_jax.data.beam_build import BeamMissingError, pipeline_options
    from cptrans_jax.data.builders import DataDirError, build

    beam_options = None
    if args.beam:
        try:
            beam_options = pipeline_options(args.beam_runner, beam_flags)
        except (BeamMissingError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        build(
            args.dataset,
            args.scene,
            args.layout,
            args.manual_dir,
            args.data_dir,
            skip_corrupt=args.skip_corrupt,
            beam_options=beam_options,
        )
    except (DataLayoutError, FrameError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except DataDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
