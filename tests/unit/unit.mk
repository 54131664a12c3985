check-unit:
	@echo "no unit tests yet"
