// CUB's device-wide scan, for the CPU build of the kernels (see ../../cuda_runtime.h).
#pragma once
#include "../../cub_host.h"
