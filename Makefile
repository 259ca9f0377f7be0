# The same commands locally and in CI. See README.md.
.PHONY: install gen lint test run bench check scenarios mutate

install:        ## system packages, .venv, buf
	scripts/install
gen:            ## regenerate gen/ from proto/
	scripts/gen
check:          ## buf lint, buf breaking, gen/ up to date
	scripts/check-contracts
lint:           ## ruff + mypy --strict (gen/ excluded)
	scripts/lint
test:           ## install, check contracts, run every test
	scripts/test
run:            ## install and start the mesh on its embedded defaults
	scripts/run
bench:          ## run the benchmarks (figures printed and compared)
	.venv/bin/python bench/run_all.py
scenarios:      ## every user story end to end (scenarios/), with a table of results
	scripts/scenarios
mutate:         ## the mutation pass (mutmut) over verdicts, keys, policy, replay, errors
	scripts/mutate
