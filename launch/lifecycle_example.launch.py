"""The managed detector node brought up by launch itself: configure, then activate once it is inactive.

    ros2 launch prune_perception lifecycle_example.launch.py model_path:=/path/to/model.onnx camera:=true

A stack with a lifecycle manager (Nav2-style bringup) drives the node instead; by hand:
    ros2 launch prune_perception detector.launch.py model_path:=m.onnx lifecycle:=true
    ros2 lifecycle set /detector_node configure     # validate parameters, load + warm up the model
    ros2 lifecycle set /detector_node activate      # publish detections
    ros2 lifecycle set /detector_node deactivate    # stop taking frames (counted as frames_inactive)
    ros2 lifecycle set /detector_node cleanup       # release the model

Arguments: those of detector.launch.py (lifecycle is always true here).
"""

import os

import lifecycle_msgs.msg
from launch import LaunchDescription
from launch.actions import EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action

from prune_perception.ros.launch_files import load_launch_module


def _setup(context, detector):
    from launch_ros.actions import LifecycleNode
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState

    context.launch_configurations["lifecycle"] = "true"
    groups = detector.single_detector_actions(context)
    node = next(action for group in groups for action in group.get_sub_entities()
                if isinstance(action, LifecycleNode))

    def transition(transition_id):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))

    return [
        *groups,
        RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, goal_state="inactive",
                                               entities=[transition(lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE)],
                                               handle_once=True)),
        transition(lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE),
    ]


def generate_launch_description():
    detector = load_launch_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "detector.launch.py"))
    return LaunchDescription([*detector.single_detector_arguments(), OpaqueFunction(function=_setup, args=[detector])])
