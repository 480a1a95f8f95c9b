module easyanimate/tests/apptainer

go 1.19
