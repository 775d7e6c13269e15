# CMake toolchain file for bare-metal Cortex-M with the GNU Arm toolchain (Debian: gcc-arm-none-eabi).
# Pass the core with -DBOARD_CPU_FLAGS="-mcpu=cortex-m4 -mthumb -mfpu=fpv4-sp-d16 -mfloat-abi=hard"
# (tvm-qplugin's board files list them: targets/<board>.toml, [toolchain] cflags).
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(BOARD_CPU_FLAGS "-mcpu=cortex-m7 -mthumb -mfpu=fpv5-d16 -mfloat-abi=hard" CACHE STRING "core flags")
set(CMAKE_C_FLAGS_INIT "${BOARD_CPU_FLAGS} -ffunction-sections -fdata-sections")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${BOARD_CPU_FLAGS}")
set(CMAKE_C_FLAGS_RELEASE_INIT "-O2")
if(NOT CMAKE_BUILD_TYPE)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "" FORCE)
endif()
