# prune_perception: `make demo` and `make test` work on a fresh clone with only Python 3.11.
# Both first run `make env` (scripts/setup_env.sh: idempotent, seconds when nothing is missing).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
VENV_ABS := $(abspath $(VENV))
PYTEST_ARGS ?=
DEMO_ARGS ?=

# Every process started here that may start rclpy: DDS discovery on loopback only, and a
# per-run domain id (1..101) so parallel runs don't see each other. TEST_ROS_DOMAIN_ID pins it.
ifeq ($(origin TEST_ROS_DOMAIN_ID),undefined)
TEST_ROS_DOMAIN_ID := $(shell echo $$(( RANDOM % 101 + 1 )))
endif
RUN_ENV := VIRTUAL_ENV=$(VENV_ABS) PATH="$(VENV_ABS)/bin:$$PATH" \
	AMENT_PREFIX_PATH="$(VENV_ABS)$${AMENT_PREFIX_PATH:+:$$AMENT_PREFIX_PATH}" \
	ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=$(TEST_ROS_DOMAIN_ID) \
	FASTDDS_DEFAULT_PROFILES_FILE=$(abspath config/fastdds_shm_localhost.xml)

# The vehicle-path tests (runtime/, bags/, the node) run a second time in FLOOR_VENV: the oldest numpy and
# OpenCV that install for this Python (scripts/setup_floor_env.sh), as on Ubuntu 22.04/24.04 ROS installs.
FLOOR_VENV ?= .venv-floor
FLOOR_VENV_ABS := $(abspath $(FLOOR_VENV))
FLOOR_TESTS ?= test/test_runtime.py test/test_adapters.py test/test_image_msg.py test/test_bags.py \
	test/test_pipeline_health.py test/test_detector_core.py test/test_vehicle_node.py
FLOOR_RUN_ENV := VIRTUAL_ENV=$(FLOOR_VENV_ABS) PATH="$(FLOOR_VENV_ABS)/bin:$$PATH" \
	AMENT_PREFIX_PATH="$(VENV_ABS)$${AMENT_PREFIX_PATH:+:$$AMENT_PREFIX_PATH}" \
	ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=$(TEST_ROS_DOMAIN_ID) \
	FASTDDS_DEFAULT_PROFILES_FILE=$(abspath config/fastdds_shm_localhost.xml)

.PHONY: help env demo test test-floor clean

help:
	@echo "make env    create/complete $(VENV) (torch CPU, ONNX Runtime, ROS 2 wheels, vision_msgs, this package)"
	@echo "make demo   env + the whole pipeline on synthetic data (DEMO_ARGS='...' passes options)"
	@echo "make test   env + pytest (PYTEST_ARGS='...' passes options); without PYTEST_ARGS also make test-floor"
	@echo "make test-floor  the vehicle-path tests again with the distributions' old numpy/OpenCV ($(FLOOR_VENV))"
	@echo "make clean  remove build outputs (keeps $(VENV))"

env:
	@VENV=$(VENV_ABS) bash scripts/setup_env.sh

demo: env
	@echo "[demo] ROS_DOMAIN_ID=$(TEST_ROS_DOMAIN_ID) ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"
	@$(RUN_ENV) $(VENV_ABS)/bin/prune-perception demo $(DEMO_ARGS)

# pytest exit code 5 = no tests collected: that is a failure here, not a pass. PRUNE_STRICT_SKIPS=1: a skipped test
# fails the run too, unless test/conftest.py's ALLOWED_SKIP_REASONS lists its reason (e.g. a GPU is present).
test: env
	@echo "[test] ROS_DOMAIN_ID=$(TEST_ROS_DOMAIN_ID) ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"
	@rc=0; $(RUN_ENV) PRUNE_STRICT_SKIPS=1 $(VENV_ABS)/bin/python -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "[test] ERROR: pytest collected no tests"; exit 1; fi; \
	$(if $(PYTEST_ARGS),,$(MAKE) --no-print-directory test-floor || rc=$$((rc ? rc : 1));) exit $$rc

test-floor: env
	@VENV=$(VENV_ABS) FLOOR_VENV=$(FLOOR_VENV_ABS) bash scripts/setup_floor_env.sh
	@echo "[test-floor] $(FLOOR_TESTS)"
	@rc=0; $(FLOOR_RUN_ENV) PRUNE_STRICT_SKIPS=1 $(FLOOR_VENV_ABS)/bin/python -m pytest -q $(FLOOR_TESTS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "[test-floor] ERROR: pytest collected no tests"; exit 1; fi; exit $$rc

clean:
	rm -rf build install log prune_perception.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
