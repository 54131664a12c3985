check-integration:
	@echo "no integration tests yet"
