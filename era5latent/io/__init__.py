"""Reading and writing fields: :mod:`.sources` (opening and normalising any ERA5 layout),
:mod:`.variables` and :mod:`.ecmwf_params` (the variable catalogue), :mod:`.units`,
:mod:`.fields` (decoded fields in WeatherBench 2 layout), :mod:`.zarrio` (Zarr helpers every
writer shares), and ERA5-like sample data (:mod:`.sample`, :mod:`.sampleclim`,
:mod:`.samplemask`)."""
