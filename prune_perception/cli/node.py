"""`node`: detector node(s) in this process, optionally with a camera publisher."""

from __future__ import annotations

import argparse
from pathlib import Path

from prune_perception.cli.common import add_command, node_overrides


def _cmd_node(args: argparse.Namespace) -> None:
    from prune_perception.ros.runner import RunnerConfig, run

    overrides = node_overrides(args.param)
    if args.model:
        overrides["model_path"] = str(Path(args.model).resolve())
    camera_params = {"fps": args.camera_fps, "count": args.camera_count}
    if args.camera_size:
        camera_params["width"], camera_params["height"] = args.camera_size
    config = RunnerConfig(params_file=args.config, overrides=overrides,
                          cameras=[c for c in (args.cameras or "").split(",") if c.strip()],
                          image_topic=args.image_topic, camera_source=args.camera, camera_params=camera_params,
                          fastdds_profile=None if args.no_fastdds_profile else (args.fastdds_profile or ""),
                          duration=args.duration, lifecycle=args.lifecycle)
    for index, counts in enumerate(run(config)):
        print(f"detector {index}: " + ", ".join(f"{key} {value}" for key, value in counts.items()))


def add_node_parser(sub) -> None:
    from prune_perception.demo import size_argument  # light: stages are imported lazily

    node = add_command(sub, "node", help="run detector node(s) in this process (pip installs; same nodes as the "
                                         "launch files)")
    node.add_argument("--config", metavar="PARAMS_YAML", help="ROS 2 params file, e.g. config/detector.yaml")
    node.add_argument("--model", help="ONNX model (overrides model_path)")
    node.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                      help="parameter override (YAML value), repeatable")
    node.add_argument("--cameras", metavar="NAMES", help="comma-separated camera names: one detector per camera "
                                                         "in namespace /NAME reading /NAME/image_raw")
    node.add_argument("--image-topic", default="/image_raw", help="input topic of a single detector")
    node.add_argument("--camera", metavar="SOURCE", help="also publish frames: 'synthetic', a video or a folder")
    node.add_argument("--camera-fps", type=float, default=10.0)
    node.add_argument("--camera-count", type=int, default=0, help="frames to publish (0: until stopped)")
    node.add_argument("--camera-size", type=size_argument, metavar="WxH",
                      help="synthetic frame size (default 640x480)")
    node.add_argument("--fastdds-profile", metavar="XML", help="Fast DDS profile, a path or a shipped name "
                      "(default: fastdds_shm.xml, shared memory + UDP on every interface, unless "
                      "FASTDDS_DEFAULT_PROFILES_FILE is set; fastdds_shm_localhost.xml keeps DDS on this machine)")
    node.add_argument("--no-fastdds-profile", action="store_true", help="leave the DDS configuration alone")
    node.add_argument("--lifecycle", action="store_true", help="managed (lifecycle) detectors: they start "
                      "unconfigured; configure/activate them with a lifecycle manager or `ros2 lifecycle set`")
    node.add_argument("--duration", type=float, help="stop after this many seconds")
    node.set_defaults(func=_cmd_node)
