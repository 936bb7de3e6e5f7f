"""ECMWF parameter facts for the variable catalogue. GENERATED: do not edit.

Written by tools/make_catalogue.py from the parameter database of ecCodes 2.50.0.
Each entry: paramId -> (GRIB shortName, ECMWF name, GRIB units, CF units, cfgrib
variable name, CF standard name or '' where ecCodes has none).
"""

from __future__ import annotations

ECCODES_VERSION = '2.50.0'

PARAMS: dict[int, tuple[str, str, str, str, str, str]] = {
    34: ('sst', 'Sea surface temperature', 'K', 'K', 'sst', ''),
    60: ('pv', 'Potential vorticity', 'K m**2 kg**-1 s**-1', 'K m2 kg-1 s-1', 'pv', ''),
    75: ('crwc', 'Specific rain water content', 'kg kg**-1', 'kg kg-1', 'crwc', ''),
    76: ('cswc', 'Specific snow water content', 'kg kg**-1', 'kg kg-1', 'cswc', ''),
    129: ('z', 'Geopotential', 'm**2 s**-2', 'm2 s-2', 'z', 'geopotential'),
    130: ('t', 'Temperature', 'K', 'K', 't', 'air_temperature'),
    131: ('u', 'U component of wind', 'm s**-1', 'm s-1', 'u', 'eastward_wind'),
    132: ('v', 'V component of wind', 'm s**-1', 'm s-1', 'v', 'northward_wind'),
    133: ('q', 'Specific humidity', 'kg kg**-1', 'kg kg-1', 'q', 'specific_humidity'),
    134: ('sp', 'Surface pressure', 'Pa', 'Pa', 'sp', 'surface_air_pressure'),
    135: ('w', 'Vertical velocity', 'Pa s**-1', 'Pa s-1', 'w', 'lagrangian_tendency_of_air_pressure'),
    137: ('tcwv', 'Total column vertically-integrated water vapour', 'kg m**-2', 'kg m-2', 'tcwv', 'lwe_thickness_of_atmosphere_mass_content_of_water_vapor'),
    138: ('vo', 'Vorticity (relative)', 's**-1', 's-1', 'vo', 'atmosphere_relative_vorticity'),
    151: ('msl', 'Mean sea level pressure', 'Pa', 'Pa', 'msl', 'air_pressure_at_mean_sea_level'),
    155: ('d', 'Divergence', 's**-1', 's-1', 'd', 'divergence_of_wind'),
    157: ('r', 'Relative humidity', '%', '%', 'r', 'relative_humidity'),
    164: ('tcc', 'Total cloud cover', '(0 - 1)', '1', 'tcc', 'cloud_area_fraction'),
    165: ('10u', '10 metre U wind component', 'm s**-1', 'm s-1', 'u10', 'eastward_wind'),
    166: ('10v', '10 metre V wind component', 'm s**-1', 'm s-1', 'v10', 'northward_wind'),
    167: ('2t', '2 metre temperature', 'K', 'K', 't2m', 'air_temperature'),
    168: ('2d', '2 metre dewpoint temperature', 'K', 'K', 'd2m', ''),
    169: ('ssrd', 'Surface short-wave (solar) radiation downwards', 'J m**-2', 'J m-2', 'ssrd', 'surface_downwelling_shortwave_flux_in_air'),
    172: ('lsm', 'Land-sea mask', '(0 - 1)', '1', 'lsm', 'land_binary_mask'),
    175: ('strd', 'Surface long-wave (thermal) radiation downwards', 'J m**-2', 'J m-2', 'strd', ''),
    203: ('o3', 'Ozone mass mixing ratio', 'kg kg**-1', 'kg kg-1', 'o3', 'mass_fraction_of_ozone_in_air'),
    228: ('tp', 'Total precipitation', 'm', 'm', 'tp', ''),
    235: ('skt', 'Skin temperature', 'K', 'K', 'skt', ''),
    246: ('clwc', 'Specific cloud liquid water content', 'kg kg**-1', 'kg kg-1', 'clwc', ''),
    247: ('ciwc', 'Specific cloud ice water content', 'kg kg**-1', 'kg kg-1', 'ciwc', ''),
    248: ('cc', 'Fraction of cloud cover', '(0 - 1)', '1', 'cc', ''),
    228246: ('100u', '100 metre U wind component', 'm s**-1', 'm s-1', 'u100', 'eastward_wind'),
    228247: ('100v', '100 metre V wind component', 'm s**-1', 'm s-1', 'v100', 'northward_wind'),
    260074: ('prmsl', 'Pressure reduced to MSL', 'Pa', 'Pa', 'prmsl', ''),
}
